"""The GRPO objective for one trained denoising step (pure functions).

    ratio = exp(logp_new - logp_old)
    policy_loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))
    loss = policy_loss + beta * mean(KL(policy step || reference step))
"""
from __future__ import annotations

import torch

from identity_grpo.finetune.sde import kl_to_reference


def clipped_policy_loss(
    logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate; logp_new [B] (with grad), logp_old [B], advantages [B] -> scalar loss.

    Stats (detached 0-d tensors): approx_kl = 0.5 * mean((logp_new - logp_old)^2) (Flow-GRPO's
    estimator), clip_fraction = share of samples whose ratio left [1 - eps, 1 + eps], ratio_mean.
    """
    if not (logp_new.shape == logp_old.shape == advantages.shape) or logp_new.ndim != 1:
        raise ValueError(
            "loss.clipped_policy_loss: logp_new, logp_old and advantages must all be [B], got "
            f"{tuple(logp_new.shape)}, {tuple(logp_old.shape)}, {tuple(advantages.shape)}"
        )
    if clip_range <= 0:
        raise ValueError(f"loss.clipped_policy_loss: clip_range must be > 0, got {clip_range}")
    log_ratio = logp_new.float() - logp_old.float().detach()
    ratio = torch.exp(log_ratio)
    advantages = advantages.float().detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "approx_kl": 0.5 * (log_ratio**2).mean(),
            "clip_fraction": ((ratio - 1.0).abs() > clip_range).float().mean(),
            "ratio_mean": ratio.mean(),
        }
    return loss, stats


def grpo_step_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    beta: float = 0.0,
    mean: torch.Tensor | None = None,
    mean_ref: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy loss plus beta times the KL to the reference policy, for one trained step.

    mean [B, ...] is the policy's step mean (with grad), mean_ref the reference's (no grad), std [B]
    the step's std; they are needed only when beta > 0. Returns the scalar loss and detached
    stats: policy_loss, kl_loss (0 when beta == 0), approx_kl, clip_fraction, ratio_mean.
    """
    policy_loss, stats = clipped_policy_loss(logp_new, logp_old, advantages, clip_range)
    if beta > 0:
        if mean is None or mean_ref is None or std is None:
            raise ValueError("loss.grpo_step_loss: beta > 0 needs mean, mean_ref and std")
        kl_loss = kl_to_reference(mean, mean_ref.detach(), std.detach()).mean()
        loss = policy_loss + beta * kl_loss
    else:
        kl_loss = policy_loss.new_zeros(())
        loss = policy_loss
    stats = {"policy_loss": policy_loss.detach(), "kl_loss": kl_loss.detach(), **stats}
    return loss, stats
