"""Does the reward rank a group's samples the way an independent identity measure does?

GRPO learns only from the order of rewards within a group (advantages are group-normalized), so
the figure that says whether a reward can teach identity is its within-group rank correlation
with a measure the policy is not trained on (on the synthetic world: world/measure.py):

    rho_g = Spearman(reward[g], measure[g])   per group g, average ranks for ties
    within_group_spearman = mean_g rho_g      over groups where both vary

A group whose rewards or measures are all equal has no order to compare and is left out, as are
samples with a non-finite value (dropped clips).
"""
from __future__ import annotations

import torch


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of values [n] (float64), ties sharing the mean of their ranks."""
    values = values.double()
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    for value in values.unique():  # ties: the mean of the ranks they occupy
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Spearman's rho of x [n] and y [n] (Pearson's r of their average ranks); None when n < 2 or
    either is constant."""
    if x.numel() < 2 or x.unique().numel() < 2 or y.unique().numel() < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.square().sum() * ry.square().sum()).sqrt())


def within_group_spearman(values: torch.Tensor, measure: torch.Tensor, group_ids: torch.Tensor) -> float | None:
    """Mean over groups of Spearman(values, measure) within each group (all [N]); None if no
    group has an order to compare."""
    if not values.shape == measure.shape == group_ids.shape or values.ndim != 1:
        raise ValueError(f"within_group_spearman: values, measure and group_ids must all be [N], got "
                         f"{tuple(values.shape)}, {tuple(measure.shape)}, {tuple(group_ids.shape)}")
    kept = torch.isfinite(values) & torch.isfinite(measure)
    rhos = [spearman(values[kept & (group_ids == g)], measure[kept & (group_ids == g)]) for g in group_ids.unique()]
    rhos = [rho for rho in rhos if rho is not None]
    return sum(rhos) / len(rhos) if rhos else None
