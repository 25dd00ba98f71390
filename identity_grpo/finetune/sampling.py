"""The denoising loop, written out: a generator predicts velocities, the noise schedule's step
(sde.sde_step or sde.cps_step) moves the latents and scores the move. Sampling records every
latent and log-prob; training recomputes the log-prob of one stored transition under the current
(LoRA-updated) policy.
"""
from __future__ import annotations

from typing import Sequence

import torch

from identity_grpo.core.seeds import Stream, stream_rng
from identity_grpo.core.timing import NO_TIMING
from identity_grpo.generators.base import Conditions, Generator
from identity_grpo.finetune.rollout import Trajectory
from identity_grpo.finetune.sde import NoiseSchedule, SdeStep


def keyed_initial_noise(generator: Generator, conds: Conditions, seed: int, stream: Stream,
                        keys: Sequence[int]) -> torch.Tensor:
    """[B, C, T, H, W]: sample j's initial noise drawn from (seed, stream, keys[j]) alone, so equal
    keys start from equal noise whatever the batching or the process."""
    return torch.cat([generator.initial_noise(conds.select([j]), stream_rng(seed, stream, int(key)))
                      for j, key in enumerate(keys)])


@torch.no_grad()
def sample_with_log_probs(
    generator: Generator,
    conds: Conditions,
    sigmas: torch.Tensor,
    noise_schedule: NoiseSchedule,
    rng: torch.Generator | None,
    initial_noise: torch.Tensor | None = None,
    timer=NO_TIMING,
) -> Trajectory:
    """Denoise conds' B samples along sigmas [S+1] (1 -> 0).

    All randomness (the initial noise unless given, then one noise tensor per stochastic step)
    comes from `rng`, drawn on the CPU so that a seed reproduces a rollout on any device.
    `timer` (core/timing.py) is charged the generator's forwards as phase "sample_forward".
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sampling.sample_with_log_probs: sigmas must be [S+1] with S >= 1, got {tuple(sigmas.shape)}")
    x = generator.initial_noise(conds, rng) if initial_noise is None else initial_noise
    x = x.float()
    batch = x.shape[0]
    if batch != conds.batch_size:
        raise ValueError(f"sampling.sample_with_log_probs: initial_noise has {batch} samples, conds {conds.batch_size}")
    sigmas = sigmas.float().to(x.device)
    latents, log_probs = [x], []
    for i in range(sigmas.numel() - 1):
        sigma, sigma_next = sigmas[i].expand(batch), sigmas[i + 1].expand(batch)
        with timer.phase("sample_forward"):
            v = generator.predict_velocity(x, sigma, conds)
        scale = noise_schedule.scale(sigma, sigma_next)
        noise = None
        if bool((scale > 0).any()):
            noise = torch.randn(x.shape, generator=rng, dtype=torch.float32).to(x.device)
        step = noise_schedule.step(x, v, sigma, sigma_next, noise=noise, scale=scale)
        x = step.x_next
        latents.append(x)
        log_probs.append(step.log_prob)
    return Trajectory(latents=torch.stack(latents, dim=1), log_probs=torch.stack(log_probs, dim=1), sigmas=sigmas.cpu())


def recompute_log_prob(
    generator: Generator,
    conds: Conditions,
    latents_t: torch.Tensor,
    latents_next: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_schedule: NoiseSchedule,
) -> SdeStep:
    """The step latents_t [B, ...] -> latents_next [B, ...] at noise levels sigma, sigma_next
    ([B] or scalars) scored under the generator's current weights. Runs under whatever grad mode
    the caller chose: with grad for the policy, under no_grad (adapter disabled) for the reference.

    The velocity is predicted exactly as during sampling (same batch layout gives bit-identical
    forwards), so before any update log_prob equals the sampled one: the on-policy check.
    """
    batch = latents_t.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=latents_t.device).expand(batch)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=latents_t.device).expand(batch)
    v = generator.predict_velocity(latents_t.float(), sigma, conds)
    return noise_schedule.step(latents_t, v, sigma, sigma_next, x_next=latents_next)
