"""The one interface stage 2 uses: clips + their reference images + prompts -> identity rewards.

    scorer = RewardScorer.from_pretrained("runs/reward/final", device="cuda", dtype=torch.bfloat16)
    rewards = scorer.score(videos, references, prompts)  # [B] float32, on the CPU; NaN for a clip with a NaN/inf pixel

Preprocessing (frames sampled, pixel budgets, prompt) comes from the model's saved config, so the
scores repeat what training saw. Loads folders written by `RewardModel.save_pretrained` and the
original Identity-GRPO release layout (detected by its model_config.json + checkpoint-N/).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reward_model.model import RewardModel
from reward_model.original_release import is_original_release, load_original_release

Frames = np.ndarray | torch.Tensor  # [T, H, W, 3], uint8 or float in [0, 1]


class RewardScorer:
    def __init__(self, model: RewardModel, device: str | torch.device | None = None, batch_size: int = 8):
        self.model = model
        self.device = torch.device(device) if device is not None else model.rm_head.weight.device
        self.batch_size = batch_size
        self.model.to(self.device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        batch_size: int = 8, instruction: str | None = None, **release_kwargs) -> "RewardScorer":
        """`instruction` (the text an original-release checkpoint was trained with; default: its folder's
        instruction.txt, see reward_model/original_release.py) and `release_kwargs` (step, backbone)
        apply to original-release folders only: a RewardModel folder's config holds its own prompt."""
        if is_original_release(path):
            model = load_original_release(path, device=device, dtype=dtype, instruction=instruction, **release_kwargs)
        elif instruction is not None or release_kwargs:
            given = sorted(release_kwargs) + (["instruction"] if instruction is not None else [])
            raise ValueError(f"{path}: options {given} only apply to original-release folders")
        else:
            model = RewardModel.from_pretrained(path, device=device, dtype=dtype)
        return cls(model, device=device, batch_size=batch_size)

    @property
    def num_frames(self) -> int:
        return self.model.config.num_frames

    def score(self, videos: Sequence[Frames] | torch.Tensor, references: Sequence[Sequence[np.ndarray]],
              prompts: Sequence[str], video_fps: float | None = None) -> torch.Tensor:
        """videos: B clips [T, H, W, 3] (or one [B, T, H, W, 3] tensor); references: per clip, its [h, w, 3]
        images; video_fps: the clips' frame rate if known (sets the time spacing as in training) -> [B] float32.

        A clip with any non-finite pixel scores NaN, unscored: converting it to pixels would give an
        ordinary-looking (black) clip a finite score, and the caller must know to skip it."""
        if len(videos) != len(references) or len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos, {len(references)} reference lists, {len(prompts)} prompts")
        rewards = torch.full((len(videos),), float("nan"))
        kept = [i for i, video in enumerate(videos) if torch.isfinite(torch.as_tensor(video)).all()]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(kept), self.batch_size):
                    chunk = kept[start : start + self.batch_size]
                    batch = self.model.processor([videos[i] for i in chunk], [references[i] for i in chunk],
                                                 [prompts[i] for i in chunk], video_fps)
                    rewards[chunk] = self.model(batch.to(self.device)).cpu()
        finally:
            self.model.train(was_training)
        return rewards
