"""IPRO's sampling chain: an Euler ODE from noise whose last K steps carry gradients, and the KL
of those steps' velocities to the reference policy (the same network with its LoRA switched off).

    x_{i+1} = x_i + v_theta(x_i, sigma_i) (sigma_{i+1} - sigma_i)              (every step)
    KL      = sum over the last K steps of w_k * mean((v_theta - v_ref)^2)     (per sample)

Steps before the last K run under no_grad: their latents are constants to the update, so the
reward's gradient reaches the adapter only through the late, low-noise steps, where identity
details are drawn (IPRO: K=4 late steps beat early ones). The squared difference is averaged over
the latent's elements, so the KL's scale does not grow with resolution or clip length. The
reference velocity is a constant too (no_grad, adapter off): the KL pulls the policy's velocity
towards it at the states the policy actually visits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from identity_grpo.generators.base import Conditions, Generator
from identity_grpo.finetune.lora import adapter_disabled


@dataclass
class LastStepsSample:
    latents: torch.Tensor  # [B, C, T, h, w] float32 final latents; differentiable through the last K steps
    kl: torch.Tensor  # [B] float32, sum_k w_k mean((v_theta - v_ref)^2) over the last K steps
    step_kl: torch.Tensor  # [B, K] float32, the unweighted per-step terms (detached, for logging)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """The flow-matching ODE step x + v (sigma_next - sigma), in float32."""
    return x.float() + v.float() * (sigma_next - sigma).float()


def velocity_gap(v: torch.Tensor, v_ref: torch.Tensor) -> torch.Tensor:
    """[B, ...] velocities -> [B] mean squared difference per sample."""
    return ((v.float() - v_ref.float()) ** 2).flatten(1).mean(dim=1)


def sample_last_steps(
    generator: Generator,
    adapted: torch.nn.Module,
    conds: Conditions,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    num_grad_steps: int,
    kl_weights: Sequence[float],
    with_kl: bool = True,
) -> LastStepsSample:
    """Denoise `noise` [B, C, T, h, w] along sigmas [S+1]; the last num_grad_steps steps run in the
    caller's grad mode (training: enabled), the ones before without gradients. `adapted` is the
    module whose adapter is switched off for the reference velocity; kl_weights has one weight per
    graded step, first to last. with_kl=False skips the reference forwards (KL reported as 0)."""
    steps = sigmas.numel() - 1
    if not 1 <= num_grad_steps <= steps:
        raise ValueError(f"ipro.sample_last_steps: num_grad_steps must be in [1, {steps}], got {num_grad_steps}")
    if len(kl_weights) != num_grad_steps:
        raise ValueError(f"ipro.sample_last_steps: {len(kl_weights)} KL weights for {num_grad_steps} steps")
    batch = noise.shape[0]
    sigmas = sigmas.float().to(noise.device)
    x = noise.float()
    first_graded = steps - num_grad_steps
    with torch.no_grad():
        for i in range(first_graded):
            x = euler_step(x, generator.predict_velocity(x, sigmas[i].expand(batch), conds), sigmas[i], sigmas[i + 1])
    gaps = []
    for i in range(first_graded, steps):
        sigma = sigmas[i].expand(batch)
        v = generator.predict_velocity(x, sigma, conds)
        if with_kl:
            with torch.no_grad(), adapter_disabled(adapted):
                v_ref = generator.predict_velocity(x.detach(), sigma, conds)
            gaps.append(velocity_gap(v, v_ref))
        else:
            gaps.append(torch.zeros(batch, device=x.device))
        x = euler_step(x, v, sigmas[i], sigmas[i + 1])
    step_kl = torch.stack(gaps, dim=1)  # [B, K]
    weights = torch.tensor(list(kl_weights), dtype=torch.float32, device=step_kl.device)
    return LastStepsSample(latents=x, kl=(step_kl * weights).sum(dim=1), step_kl=step_kl.detach())
