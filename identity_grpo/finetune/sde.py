"""One reverse step of the flow-matching SDE and its Gaussian log-probability (pure tensor math).

Convention: x_sigma = (1 - sigma) x0 + sigma eps, the model predicts v = eps - x0, sampling goes
sigma: 1 -> 0, dt = sigma_next - sigma < 0. With noise scale s the reverse step is Gaussian:

    mean = x (1 + s^2 / (2 sigma) dt) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt
    std  = s sqrt(-dt)

s = 0 gives the ODE Euler step x + v dt. All arithmetic is float32 whatever the input dtype: the
log-probs of a bf16 rollout must be comparable with the ones recomputed during training.
Sigmas and noise scales may be Python floats, 0-d tensors, or [B] tensors (one per sample).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from identity_grpo.core.config_io import require_at_least

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class SdeStep:
    x_next: torch.Tensor  # [B, ...] float32, the next latent (sampled, or the one given)
    log_prob: torch.Tensor  # [B] float32, mean over non-batch dims of log N(x_next; mean, std^2); NaN where std = 0
    mean: torch.Tensor  # [B, ...] float32, the Gaussian's mean (differentiable w.r.t. v)
    std: torch.Tensor  # [B] float32, the Gaussian's standard deviation


def _per_sample(value: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A float, 0-d or [B] tensor -> [B] float32 on device."""
    value = torch.as_tensor(value, dtype=torch.float32, device=device)
    if value.ndim == 0:
        return value.expand(batch)
    if value.shape != (batch,):
        raise ValueError(f"sde: expected a scalar or one value per sample [{batch}], got shape {tuple(value.shape)}")
    return value


def _broadcast(per_sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, ...] matching like's rank."""
    return per_sample.view(-1, *([1] * (like.ndim - 1)))


def flow_grpo_noise_scale(
    sigma: float | torch.Tensor, sigma_next: float | torch.Tensor, eta: float
) -> torch.Tensor:
    """Flow-GRPO's s = eta * sqrt(sigma / (1 - sigma)).

    At sigma = 1 the ratio is infinite; like Flow-GRPO, the sigma in the denominator is then
    replaced by the next sigma, which keeps the first step's noise finite.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=sigma.device)
    denominator_sigma = torch.where(sigma >= 1.0, sigma_next, sigma)
    return eta * torch.sqrt(sigma / (1.0 - denominator_sigma))


def linear_noise_scale(sigma: float | torch.Tensor, s_min: float, s_max: float) -> torch.Tensor:
    """s = s_min + (s_max - s_min) * sigma: most noise early, least near the clean sample."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    return s_min + (s_max - s_min) * sigma


@dataclass
class NoiseSchedule:
    """Which noise scale s(sigma) the sampler uses; "ode" is the deterministic sampler (s = 0)."""

    kind: Literal["flow_grpo", "linear", "ode"] = "flow_grpo"
    eta: float = 0.7  # flow_grpo
    s_min: float = 0.0  # linear
    s_max: float = 0.7  # linear

    def validate(self) -> None:
        if self.kind not in ("flow_grpo", "linear", "ode"):
            raise ValueError(f"sde.NoiseSchedule.kind: expected flow_grpo, linear or ode, got {self.kind!r}")
        require_at_least("", self, 0, "eta", "s_min", "s_max")

    def scale(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        """The noise scale s for the step sigma -> sigma_next (float32, shaped like sigma)."""
        if self.kind == "flow_grpo":
            return flow_grpo_noise_scale(sigma, sigma_next, self.eta)
        if self.kind == "linear":
            return linear_noise_scale(sigma, self.s_min, self.s_max)
        if self.kind == "ode":
            return torch.zeros_like(torch.as_tensor(sigma, dtype=torch.float32))
        raise ValueError(f"sde.NoiseSchedule.kind: unknown {self.kind!r}")


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean over non-batch dims of log N(x; mean, std^2); x, mean [B, ...], std [B] -> [B].

    Averaging (not summing) keeps log-probs of different resolutions on one scale, as Flow-GRPO.
    """
    std_b = _broadcast(std, x)
    elementwise = -((x - mean) ** 2) / (2 * std_b**2) - torch.log(std_b) - _LOG_SQRT_2PI
    return elementwise.flatten(1).mean(dim=1)


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_scale: float | torch.Tensor,
    noise: torch.Tensor | None = None,
    x_next: torch.Tensor | None = None,
) -> SdeStep:
    """One reverse step sigma -> sigma_next from latent x [B, ...] with velocity v [B, ...].

    Sampling: pass `noise` (standard normal, shaped like x); x_next = mean + std * noise.
    Recomputing a stored transition: pass `x_next`; its log-prob under the current v is returned
    (x_next is detached: gradients flow only through the mean).
    Where noise_scale is 0 the step is the ODE Euler step, x_next = mean, and log_prob is NaN,
    because a point mass has no density: training on such a step is a bug that must not pass silently.
    """
    if noise is not None and x_next is not None:
        raise ValueError("sde.sde_step: pass either noise (to sample) or x_next (to score), not both")
    batch = x.shape[0]
    x = x.float()
    v = v.float()
    sigma_b = _per_sample(sigma, batch, x.device)
    s = _per_sample(noise_scale, batch, x.device)
    dt = _per_sample(sigma_next, batch, x.device) - sigma_b
    if torch.any(sigma_b <= 0) or torch.any(dt >= 0):
        raise ValueError("sde.sde_step: need 0 < sigma_next < sigma (sigma_next may be 0)")

    sigma_x, s_x, dt_x = _broadcast(sigma_b, x), _broadcast(s, x), _broadcast(dt, x)
    mean = x * (1 + s_x**2 / (2 * sigma_x) * dt_x) + v * (1 + s_x**2 * (1 - sigma_x) / (2 * sigma_x)) * dt_x
    std = s * torch.sqrt(-dt)
    stochastic = std > 0

    if x_next is None:
        if noise is None and bool(stochastic.any()):
            raise ValueError("sde.sde_step: a stochastic step (noise_scale > 0) needs noise or x_next")
        x_next = mean if noise is None else mean + _broadcast(std, x) * noise.float()
    x_next = x_next.detach().float()

    safe_std = torch.where(stochastic, std, torch.ones_like(std))
    log_prob = gaussian_log_prob(x_next, mean, safe_std)
    log_prob = torch.where(stochastic, log_prob, torch.full_like(log_prob, float("nan")))
    return SdeStep(x_next=x_next, log_prob=log_prob, mean=mean, std=std)


def kl_to_reference(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(mean_ref, std^2)) = ||mean - mean_ref||^2 / (2 std^2), averaged over
    non-batch dims like the log-prob. mean, mean_ref [B, ...], std [B] -> [B]."""
    diff2 = (mean.float() - mean_ref.float()) ** 2
    return diff2.flatten(1).mean(dim=1) / (2 * std.float() ** 2)
