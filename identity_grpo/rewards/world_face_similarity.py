"""The synthetic world's face-similarity reward for GRPO: what ArcFace similarity is on real
footage, on the world's faces. A small detector and embedder trained on rendered faces of
training identities (identity_grpo/world/face_models.py, cached; the same models IPRO backpropagates through)
score each generated person against a pool of that person's faces from clips the world renders.

It is a learned model like the reward model, not the world's rendering-rule measure
(identity_grpo/world/measure.py), which stays the independent evaluation.

    rewards:
      - {name: world_face_similarity, weight: 1.0}     # options: any WorldFaceSettings field
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.rewards.spec import RewardFn, RewardKind, RewardSpec
from identity_grpo.core.config_io import ConfigError, from_dict


def parse_settings(spec: RewardSpec):
    from identity_grpo.world.face_models import WorldFaceSettings

    if spec.path:
        raise ConfigError("path: must be empty (the world's face models are trained and cached on first use)")
    try:
        settings = from_dict(WorldFaceSettings, dict(spec.options), source="options")
        settings.validate()
    except (ConfigError, ValueError, TypeError) as error:
        raise ConfigError(f"options: {error}") from None
    return settings


def build(spec: RewardSpec, device: torch.device) -> RewardFn:
    from identity_grpo.world.face_models import world_face_reward  # trains on first use

    reward = world_face_reward(parse_settings(spec), device)

    def world_face_similarity(videos: torch.Tensor, references: Sequence[Sequence[np.ndarray]], prompts: Sequence[str],
                              records: Sequence[PromptRecord] | None = None) -> torch.Tensor:
        if records is None:
            raise ValueError("world_face_similarity: needs the prompt records (records=...) to know who should appear")
        with torch.no_grad():
            return reward(videos.to(device), records)

    return world_face_similarity


KIND = RewardKind(build, parse_settings)
