"""Group-relative advantages: how much better each sample scored than its group (same prompt and
references) did.

    A = (r - mean_group) / (std + eps),  clipped to [-clip, clip]

`std` is the group's std ("group", the Identity-GRPO setting), the std of every reward in the
batch ("batch"), or 1 ("none": A = r - mean_group). Stds are population stds (ddof = 0), as
Flow-GRPO's PerPromptStatTracker computes them with np.std, so a group of two rewards r, r'
gets advantages of about +-1 rather than +-0.71. Statistics are computed in float64.

A non-finite reward (a sample the trainer dropped) takes no part: its group's statistics come from
the other members, and its advantage is NaN, which the update skips.
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
    r = rewards.detach().to(torch.float64)
    finite = torch.isfinite(r)
    if not finite.any():
        raise ValueError("advantages.group_advantages: no finite reward")
    _, member_of = torch.unique(group_ids.to(r.device), return_inverse=True)
    num_groups = int(member_of.max()) + 1
    zeros = torch.zeros(num_groups, dtype=torch.float64, device=r.device)
    counts = zeros.index_add(0, member_of, finite.double())
    present = counts > 0  # groups with at least one finite reward
    group_mean = zeros.index_add(0, member_of, torch.where(finite, r, 0.0)) / counts.clamp(min=1)
    centred = torch.where(finite, r - group_mean[member_of], 0.0)
    group_std = (zeros.index_add(0, member_of, centred**2) / counts.clamp(min=1)).sqrt()

    if scaling == "group":
        advantages = centred / (group_std[member_of] + eps)
    elif scaling == "batch":
        advantages = centred / (r[finite].std(unbiased=False) + eps)
    else:
        advantages = centred
    clipped = advantages[finite].abs() > clip
    advantages = torch.where(finite, advantages.clamp(-clip, clip), float("nan"))

    stats = {
        "reward_mean": float(r[finite].mean()),
        "reward_std": float(r[finite].std(unbiased=False)),
        "group_std_mean": float(group_std[present].mean()),
        "zero_std_fraction": float((group_std[present] < ZERO_STD_TOLERANCE).double().mean()),
        "advantage_abs_mean": float(advantages[finite].abs().mean()),
        "advantage_clip_fraction": float(clipped.double().mean()),
        "num_groups": float(present.sum()),
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
