"""Reward-gradient mode (IPRO, arXiv 2510.14255): its config, the last-K-steps sampling chain
(last_steps.py), its differentiable face reward (face_reward.py) and its step (recipe.py). The face
pieces it backpropagates through (crops, iresnet, pool reward) live in identity_grpo/faces/."""
