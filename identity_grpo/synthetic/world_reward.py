"""The synthetic world's face-similarity reward for GRPO: what ArcFace similarity is on real
footage, on the world's faces. A small detector and embedder trained on rendered faces of
training identities (ipro/world_faces.py, cached; the same models IPRO backpropagates through)
score each generated person against a pool of that person's faces from clips the world renders.

It is a learned model like the reward model, not the world's rendering-rule measure
(reward_model/synthetic/measure.py), which stays the independent evaluation.

    rewards:
      - {name: world_face_similarity, weight: 1.0}     # options: any WorldFaceSettings field
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from identity_grpo.config import RewardSpec
from identity_grpo.prompts import PromptRecord
from identity_grpo.rewards import RewardFn, register_reward
from reward_model.config_io import ConfigError, from_dict


@register_reward("world_face_similarity")
def build_world_face_similarity(spec: RewardSpec, device: torch.device) -> RewardFn:
    from identity_grpo.ipro.world_faces import WorldFaceSettings, world_face_reward  # trains on first use

    if spec.path:
        raise ConfigError("path: must be empty (the world's face models are trained and cached on first use)")
    try:
        settings = from_dict(WorldFaceSettings, dict(spec.options))
        settings.validate()
    except (ConfigError, ValueError, TypeError) as error:
        raise ConfigError(f"options: {error}") from None
    reward = world_face_reward(settings, device)

    def world_face_similarity(videos: torch.Tensor, references: Sequence[Sequence[np.ndarray]], prompts: Sequence[str],
                              records: Sequence[PromptRecord] | None = None) -> torch.Tensor:
        if records is None:
            raise ValueError("world_face_similarity: needs the prompt records (records=...) to know who should appear")
        with torch.no_grad():
            return reward(videos.to(device), records)

    return world_face_similarity
