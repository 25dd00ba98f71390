"""Typed records of sampled trajectories, and the slicing the GRPO update needs.

Shapes: B samples, S denoising steps, latent [C, T, H, W] (generator specific; for VACE T
includes the reference frames).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from identity_grpo.generators.base import Conditions


@dataclass
class Trajectory:
    """What the sampler records."""

    latents: torch.Tensor  # [B, S+1, C, T, H, W] float32; [:, 0] the initial noise, [:, i+1] after step i
    log_probs: torch.Tensor  # [B, S] float32; log p(latents[:, i+1] | latents[:, i]); NaN for ODE steps
    sigmas: torch.Tensor  # [S+1] float32; noise level of latents[:, i], 1 -> 0

    @property
    def final_latents(self) -> torch.Tensor:  # [B, C, T, H, W]
        return self.latents[:, -1]


@dataclass
class Transition:
    """One denoising step of every sample of a batch, as the loss consumes it."""

    latents: torch.Tensor  # [B, C, T, H, W] float32, the state before the step
    next_latents: torch.Tensor  # [B, C, T, H, W] float32, the state the sampler went to
    log_probs: torch.Tensor  # [B] float32, log-prob of next_latents when sampled (the "old" policy)
    sigmas: torch.Tensor  # [B] float32, noise level before the step
    sigmas_next: torch.Tensor  # [B] float32, noise level after the step
    advantages: torch.Tensor  # [B] float32


@dataclass
class Rollout:
    """A batch of sampled videos with everything the update needs."""

    latents: torch.Tensor  # [B, S+1, C, T, H, W] float32, see Trajectory
    log_probs: torch.Tensor  # [B, S] float32, see Trajectory
    sigmas: torch.Tensor  # [S+1] float32, shared by all samples
    conds: Conditions  # encoded conditions of the B samples
    group_ids: torch.Tensor  # [B] long; samples with one id share prompt and references
    references: list[list[np.ndarray]]  # B lists of uint8 [h, w, 3] reference images
    videos: torch.Tensor | None = None  # [B, F, H, W, 3] float in [0, 1], decoded final latents
    rewards: torch.Tensor | None = None  # [B] float32
    advantages: torch.Tensor | None = None  # [B] float32

    def __post_init__(self) -> None:
        b = self.latents.shape[0]
        s = self.log_probs.shape[1] if self.log_probs.ndim == 2 else -1
        checks = {
            "latents": self.latents.ndim >= 3 and self.latents.shape[1] == s + 1,
            "log_probs": self.log_probs.shape == (b, s),
            "sigmas": self.sigmas.shape == (s + 1,),
            "conds": self.conds.batch_size == b,
            "group_ids": self.group_ids.shape == (b,),
            "references": len(self.references) == b,
            "videos": self.videos is None or self.videos.shape[0] == b,
            "rewards": self.rewards is None or self.rewards.shape == (b,),
            "advantages": self.advantages is None or self.advantages.shape == (b,),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"rollout.Rollout: fields {bad} do not fit latents {tuple(self.latents.shape)} "
                f"and log_probs {tuple(self.log_probs.shape)}"
            )

    @classmethod
    def from_trajectory(
        cls, trajectory: Trajectory, conds: Conditions, group_ids: torch.Tensor, references: list[list[np.ndarray]]
    ) -> "Rollout":
        return cls(trajectory.latents, trajectory.log_probs, trajectory.sigmas, conds, group_ids, references)

    @property
    def prompts(self) -> list[str]:
        return self.conds.prompts

    @property
    def batch_size(self) -> int:
        return self.latents.shape[0]

    @property
    def num_steps(self) -> int:
        return self.log_probs.shape[1]

    @property
    def final_latents(self) -> torch.Tensor:  # [B, C, T, H, W]
        return self.latents[:, -1]

    def select(self, index: torch.Tensor | list[int]) -> "Rollout":
        """The samples at `index` (a [K] long tensor or list), in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        at = lambda t: None if t is None else t[index.to(t.device)]  # noqa: E731
        return replace(
            self,
            latents=at(self.latents),
            log_probs=at(self.log_probs),
            conds=self.conds.select(index),
            group_ids=at(self.group_ids),
            references=[self.references[i] for i in index.tolist()],
            videos=at(self.videos),
            rewards=at(self.rewards),
            advantages=at(self.advantages),
        )

    def to(self, device: torch.device | str) -> "Rollout":
        conds = Conditions({k: v.to(device) for k, v in self.conds.tensors.items()}, list(self.conds.prompts))
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        tensors = {name: value.to(device) for name, value in values.items() if isinstance(value, torch.Tensor)}
        return replace(self, conds=conds, **tensors)

    def stochastic_steps(self) -> torch.Tensor:
        """[K] long: the steps that were sampled with noise (finite log-probs for every sample);
        only these can be trained."""
        return torch.nonzero(torch.isfinite(self.log_probs).all(dim=0)).flatten().cpu()

    def train_steps(self, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, K] long: the steps each sample trains on this epoch, K = max(1, int(fraction * #stochastic)).

        With a generator every sample draws its own K steps (Flow-GRPO shuffles timesteps per
        sample); without one, every sample takes the first K stochastic steps.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"rollout.Rollout.train_steps: fraction must be in (0, 1], got {fraction}")
        candidates = self.stochastic_steps()
        if candidates.numel() == 0:
            raise ValueError("rollout.Rollout.train_steps: no stochastic steps (was the rollout sampled with the ODE?)")
        k = max(1, int(fraction * candidates.numel()))
        if generator is None:
            return candidates[:k].expand(self.batch_size, k).clone()
        draws = [torch.randperm(candidates.numel(), generator=generator)[:k] for _ in range(self.batch_size)]
        return torch.stack([candidates[d] for d in draws])

    def transition(self, step: int | torch.Tensor) -> Transition:
        """The step `step` of every sample; `step` is an int or a [B] long tensor (one per sample)."""
        if self.advantages is None:
            raise ValueError("rollout.Rollout.transition: advantages are not set yet")
        rows = torch.arange(self.batch_size, device=self.latents.device)
        step = torch.as_tensor(step, dtype=torch.long, device=self.latents.device).expand(self.batch_size)
        sigmas = self.sigmas.to(self.latents.device)
        return Transition(
            latents=self.latents[rows, step],
            next_latents=self.latents[rows, step + 1],
            log_probs=self.log_probs[rows, step.to(self.log_probs.device)],
            sigmas=sigmas[step],
            sigmas_next=sigmas[step + 1],
            advantages=self.advantages,
        )

    @classmethod
    def concatenate(cls, rollouts: list["Rollout"]) -> "Rollout":
        """One rollout from several sampling batches (same steps and latent shape)."""
        if not rollouts:
            raise ValueError("rollout.Rollout.concatenate: no rollouts")
        first = rollouts[0]
        if any(not torch.equal(r.sigmas, first.sigmas) for r in rollouts):
            raise ValueError("rollout.Rollout.concatenate: rollouts were sampled with different sigmas")

        def cat(name: str):
            values = [getattr(r, name) for r in rollouts]
            if all(v is None for v in values):
                return None
            if any(v is None for v in values):
                raise ValueError(f"rollout.Rollout.concatenate: field {name} is set on some rollouts only")
            return torch.cat(values)

        conds = Conditions(
            {k: torch.cat([r.conds.tensors[k] for r in rollouts]) for k in first.conds.tensors},
            [p for r in rollouts for p in r.conds.prompts],
        )
        return cls(
            latents=cat("latents"),
            log_probs=cat("log_probs"),
            sigmas=first.sigmas,
            conds=conds,
            group_ids=cat("group_ids"),
            references=[ref for r in rollouts for ref in r.references],
            videos=cat("videos"),
            rewards=cat("rewards"),
            advantages=cat("advantages"),
        )
