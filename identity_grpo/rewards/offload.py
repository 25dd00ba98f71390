"""A reward model that stays on the CPU except while it scores (rewards[i].options.offload), so the
phases that do not score (sampling, the update; IPRO's whole training step) have its GPU memory.

    fn = OffloadedScorer(scorer, device)     # scorer: reward_model.scorer.RewardScorer, built on the CPU
    fn(videos, references, prompts)          # model -> device, score, model -> CPU

The weights travel twice per scoring call (Qwen2.5-VL-3B in bf16: ~7.5 GB, well under a second each
way over PCIe 4 x16); the scores are those of the scorer kept on the device: the same weights, the
same inputs, the same device when they are computed.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class OffloadedScorer:
    def __init__(self, scorer, device: torch.device | str) -> None:
        self.scorer, self.device = scorer, torch.device(device)
        scorer.model.to("cpu")
        scorer.device = self.device  # where score() sends each batch: the model is there while it scores

    def __call__(self, videos: torch.Tensor, references: Sequence[Sequence[np.ndarray]],
                 prompts: Sequence[str]) -> torch.Tensor:
        self.scorer.model.to(self.device)
        try:
            return self.scorer.score(videos, references, prompts)
        finally:
            self.scorer.model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # hand the freed blocks back for the generator's next phase
