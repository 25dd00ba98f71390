"""One reverse step of the flow-matching SDE and its Gaussian log-probability (pure tensor math).

Convention: x_sigma = (1 - sigma) x0 + sigma eps, the model predicts v = eps - x0, sampling goes
sigma: 1 -> 0, dt = sigma_next - sigma < 0. With noise scale s the reverse step is Gaussian:

    mean = x (1 + s^2 / (2 sigma) dt) + v (1 + s^2 (1 - sigma) / (2 sigma)) dt
    std  = s sqrt(-dt)

s = 0 gives the ODE Euler step x + v dt.

The coefficients-preserving step (CPS: Wang & Yu 2025, arXiv:2509.05952; Flow-GRPO's sde_type
"cps", noise level ~0.8) moves the predicted x0 = x - sigma v and eps = x + (1 - sigma) v to
sigma_next, with noise angle theta = noise_level pi / 2:

    mean = (1 - sigma_next) x0 + sigma_next cos(theta) eps  =  x + v dt - sigma_next (1 - cos theta) eps
    std  = sigma_next sin(theta)

The eps and noise coefficients satisfy (sigma_next cos)^2 + std^2 = sigma_next^2, so a sample stays
at the marginal (1 - sigma_next) x0 + sigma_next eps'. Level 0 is the deterministic DDIM step
(1 - sigma_next) x0 + sigma_next eps, which is the Euler step (written as such: bit-identical);
the last step (sigma_next = 0) is deterministic at any level.

Both steps score x_next with the full Gaussian log N(x_next; mean, std^2), averaged over non-batch
dims (Flow-GRPO's cps keeps only -(x_next - mean)^2, so its clip ranges do not carry over). All arithmetic is float32 whatever the input dtype: the log-probs of a bf16 rollout must be
comparable with the ones recomputed during training. Sigmas, noise scales and levels may be
Python floats, 0-d tensors, or [B] tensors (one per sample).
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
    """Which sampler and noise the reverse steps use: the SDE step with noise scale s(sigma)
    (flow_grpo, linear), the CPS step with a noise level (cps), or the deterministic sampler (ode)."""

    kind: Literal["flow_grpo", "linear", "cps", "ode"] = "flow_grpo"
    eta: float = 0.7  # flow_grpo
    s_min: float = 0.0  # linear
    s_max: float = 0.7  # linear
    noise_level: float = 0.8  # cps, in [0, 1]

    def validate(self) -> None:
        if self.kind not in ("flow_grpo", "linear", "cps", "ode"):
            raise ValueError(f"sde.NoiseSchedule.kind: expected flow_grpo, linear, cps or ode, got {self.kind!r}")
        require_at_least("", self, 0, "eta", "s_min", "s_max")
        if not 0 <= self.noise_level <= 1:
            raise ValueError(f"noise_level must be in [0, 1], got {self.noise_level}")

    def scale(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        """The step sigma -> sigma_next's noise parameter (float32, shaped like sigma): the noise
        scale s, or for cps the noise level; 0 means the deterministic (Euler) step."""
        if self.kind == "flow_grpo":
            return flow_grpo_noise_scale(sigma, sigma_next, self.eta)
        if self.kind == "linear":
            return linear_noise_scale(sigma, self.s_min, self.s_max)
        if self.kind in ("cps", "ode"):
            level = self.noise_level if self.kind == "cps" else 0.0
            return torch.full_like(torch.as_tensor(sigma, dtype=torch.float32), level)
        raise ValueError(f"sde.NoiseSchedule.kind: unknown {self.kind!r}")

    def step(
        self,
        x: torch.Tensor,
        v: torch.Tensor,
        sigma: float | torch.Tensor,
        sigma_next: float | torch.Tensor,
        noise: torch.Tensor | None = None,
        x_next: torch.Tensor | None = None,
        scale: float | torch.Tensor | None = None,
    ) -> SdeStep:
        """This schedule's reverse step (see sde_step); `scale` replaces self.scale(sigma, sigma_next)
        (the SDE window passes its own)."""
        scale = self.scale(sigma, sigma_next) if scale is None else scale
        step = cps_step if self.kind == "cps" else sde_step
        return step(x, v, sigma, sigma_next, scale, noise=noise, x_next=x_next)


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
    batch, x, v, sigma_b, sigma_next_b = _prepare("sde_step", x, v, sigma, sigma_next, noise, x_next)
    dt = sigma_next_b - sigma_b
    s = _per_sample(noise_scale, batch, x.device)
    sigma_x, s_x, dt_x = _broadcast(sigma_b, x), _broadcast(s, x), _broadcast(dt, x)
    mean = x * (1 + s_x**2 / (2 * sigma_x) * dt_x) + v * (1 + s_x**2 * (1 - sigma_x) / (2 * sigma_x)) * dt_x
    return _gaussian_step("sde_step", mean, s * torch.sqrt(-dt), noise, x_next)


def cps_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float | torch.Tensor,
    noise: torch.Tensor | None = None,
    x_next: torch.Tensor | None = None,
) -> SdeStep:
    """One coefficients-preserving reverse step (module docstring), noise_level in [0, 1]; called
    like sde_step. Level 0, or sigma_next = 0, is the deterministic Euler step (NaN log-prob)."""
    batch, x, v, sigma_b, sigma_next_b = _prepare("cps_step", x, v, sigma, sigma_next, noise, x_next)
    level = _per_sample(noise_level, batch, x.device)
    if torch.any(level < 0) or torch.any(level > 1):
        raise ValueError("sde.cps_step: noise_level must be in [0, 1]")
    theta = level * (math.pi / 2)
    eps_hat = x + _broadcast(1 - sigma_b, x) * v
    dt = _broadcast(sigma_next_b - sigma_b, x)
    mean = x + v * dt - _broadcast(sigma_next_b * (1 - torch.cos(theta)), x) * eps_hat
    return _gaussian_step("cps_step", mean, sigma_next_b * torch.sin(theta), noise, x_next)


def _prepare(name, x, v, sigma, sigma_next, noise, x_next):
    """Shared argument checks: -> batch, x and v in float32, sigma [B], sigma_next [B]."""
    if noise is not None and x_next is not None:
        raise ValueError(f"sde.{name}: pass either noise (to sample) or x_next (to score), not both")
    batch = x.shape[0]
    x = x.float()
    sigma_b = _per_sample(sigma, batch, x.device)
    sigma_next_b = _per_sample(sigma_next, batch, x.device)
    if torch.any(sigma_b <= 0) or torch.any(sigma_next_b - sigma_b >= 0):
        raise ValueError(f"sde.{name}: need 0 < sigma_next < sigma (sigma_next may be 0)")
    return batch, x, v.float(), sigma_b, sigma_next_b


def _gaussian_step(name: str, mean: torch.Tensor, std: torch.Tensor, noise, x_next) -> SdeStep:
    """Sample (or take) x_next from N(mean, std^2) and score it; std = 0: x_next = mean, NaN log-prob."""
    stochastic = std > 0
    if x_next is None:
        if noise is None and bool(stochastic.any()):
            raise ValueError(f"sde.{name}: a stochastic step (std > 0) needs noise or x_next")
        x_next = mean if noise is None else mean + _broadcast(std, mean) * noise.float()
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
