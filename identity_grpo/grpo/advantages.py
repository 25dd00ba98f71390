"""Group-relative advantages: how much better each sample scored than its group (same prompt and
references) did.

    A = (r - mean_group) / (std + eps),  clipped to [-clip, clip]

`std` is the group's std ("group", the Identity-GRPO setting), the std of every reward in the
batch ("batch"), or 1 ("none": A = r - mean_group). Stds are population stds (ddof = 0), as
Flow-GRPO's PerPromptStatTracker computes them with np.std, so a group of two rewards r, r'
gets advantages of about +-1 rather than +-0.71. Statistics are computed in float64.
"""
from __future__ import annotations

from typing import Literal

import torch

Scaling = Literal["group", "batch", "none"]

# A group whose rewards spread less than this counts as "zero std": it gives no learning signal.
ZERO_STD_TOLERANCE = 1e-6


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scaling: Scaling = "group",
    clip: float = 5.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """rewards [N], group_ids [N] (any integers; a group's members may be anywhere in the batch)
    -> advantages [N] float32 on rewards' device, and statistics for logging."""
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"advantages.group_advantages: rewards and group_ids must both be [N], got "
            f"{tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    if scaling not in ("group", "batch", "none"):
        raise ValueError(f"advantages.group_advantages: scaling must be group, batch or none, got {scaling!r}")
    if not torch.isfinite(rewards).all():
        raise ValueError("advantages.group_advantages: rewards contain NaN or inf")

    r = rewards.detach().to(torch.float64)
    _, member_of = torch.unique(group_ids.to(r.device), return_inverse=True)
    num_groups = int(member_of.max()) + 1
    counts = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, member_of, torch.ones_like(r))
    group_mean = torch.zeros_like(counts).index_add_(0, member_of, r) / counts
    centred = r - group_mean[member_of]
    group_var = torch.zeros_like(counts).index_add_(0, member_of, centred**2) / counts
    group_std = group_var.sqrt()

    if scaling == "group":
        advantages = centred / (group_std[member_of] + eps)
    elif scaling == "batch":
        advantages = centred / (r.std(unbiased=False) + eps)
    else:
        advantages = centred
    clipped = advantages.abs() > clip
    advantages = advantages.clamp(-clip, clip)

    stats = {
        "reward_mean": float(r.mean()),
        "reward_std": float(r.std(unbiased=False)),
        "group_std_mean": float(group_std.mean()),
        "zero_std_fraction": float((group_std < ZERO_STD_TOLERANCE).double().mean()),
        "advantage_abs_mean": float(advantages.abs().mean()),
        "advantage_clip_fraction": float(clipped.double().mean()),
        "num_groups": float(num_groups),
    }
    return advantages.to(torch.float32), stats


def gather_for_advantages(
    accelerator,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    scaling: Scaling = "group",
    clip: float = 5.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages when a group's samples are spread over processes.

    Every process holds the same number N of local rewards; all are gathered (process 0's first),
    normalized together, and each process keeps its own N. group_ids must be global: the same id
    on every process that holds members of that group. Statistics describe the whole batch.
    """
    local = rewards.shape[0]
    all_rewards = accelerator.gather(rewards.detach().contiguous())
    all_ids = accelerator.gather(group_ids.to(rewards.device).contiguous())
    if all_rewards.shape[0] != local * accelerator.num_processes:
        raise ValueError(
            "advantages.gather_for_advantages: every process must hold the same number of rewards "
            f"(this one has {local}, gathered {all_rewards.shape[0]} from {accelerator.num_processes})"
        )
    advantages, stats = group_advantages(all_rewards, all_ids, scaling, clip, eps)
    start = accelerator.process_index * local
    return advantages[start : start + local], stats
