"""Flow-GRPO-Fast's SDE window: noise only on a few consecutive denoising steps, ODE elsewhere.

Steps outside the window are deterministic, so they get NaN log-probs and `Rollout.train_steps`
never picks them: the update trains exactly the window, at a fraction of the cost, while the
samples keep their diversity from the window's noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from identity_grpo.finetune.sde import NoiseSchedule, SdeStep


@dataclass
class WindowedNoiseSchedule:
    """`base`'s noise scale on steps [start, start + size) of the schedule `sigmas`, 0 elsewhere.

    Has NoiseSchedule's `scale(sigma, sigma_next)` and `step(...)` (base's sampler, SDE or CPS, whose
    noise parameter 0 is the Euler step); a step is recognised by its sigma, which lies in
    (sigmas[start + size], sigmas[start]] exactly when it is one of the window's steps.
    """

    base: NoiseSchedule
    sigmas: torch.Tensor  # [S+1] float32, the schedule being sampled, 1 -> 0
    start: int
    size: int

    def __post_init__(self) -> None:
        steps = self.sigmas.numel() - 1
        if self.size < 1 or self.start < 0 or self.start + self.size > steps:
            raise ValueError(f"sde_window: window [{self.start}, {self.start + self.size}) does not fit {steps} steps")

    def scale(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        high = float(self.sigmas[self.start])
        low = float(self.sigmas[self.start + self.size])
        inside = (sigma <= high) & (sigma > low)
        return torch.where(inside, self.base.scale(sigma, sigma_next), torch.zeros_like(sigma))

    def step(self, x, v, sigma, sigma_next, noise=None, x_next=None, scale=None) -> SdeStep:
        scale = self.scale(sigma, sigma_next) if scale is None else scale
        return self.base.step(x, v, sigma, sigma_next, noise=noise, x_next=x_next, scale=scale)


def draw_window_start(num_steps: int, size: int, start_range: list[int], rng: torch.Generator) -> int:
    """The window's first step, uniform over start_range [lo, hi] (empty: every start that fits)."""
    lo, hi = start_range if start_range else (0, num_steps - size)
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))
