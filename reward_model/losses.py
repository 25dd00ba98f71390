"""Pairwise preference losses on reward tensors: Bradley-Terry and Bradley-Terry with ties (Rao-Kupper).

labels: 0 = clip a preferred, 1 = clip b preferred, 2 = tie. With d = r_preferred - r_other and k > 1:

    P(preferred wins) = sigmoid(d - ln k)            loss  -log sigmoid(d - ln k)
    P(tie)            = (k^2 - 1) sigmoid(d - ln k) sigmoid(-d - ln k)
                                                     loss  -log sigmoid(d - ln k) - log sigmoid(-d - ln k) - ln(k^2 - 1)

(for a tie, d = r_a - r_b; the tie loss is symmetric in d). A tie is most likely at d = 0 and a
win needs a margin above ln k. Plain Bradley-Terry is k = 1, where ties have probability 0:
`bradley_terry_loss` leaves tied pairs out of the mean (they carry no BT signal), and a batch of
only ties gives a zero loss that still depends on the rewards, so backward works everywhere.

Stats (python floats): `accuracy` and `margin` (mean d) over non-tied pairs, `tie_within_margin`
(fraction of tied pairs with |d| < ln k; k > 1 only) and `tie_abs_margin` over tied pairs - each present only
when its set is non-empty, so aggregate them weighted by `num_non_tied` / `num_tied`, which are
always present.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

A_PREFERRED, B_PREFERRED, TIE = 0, 1, 2


def _preferred_margin(r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (d [N] float32: r_preferred - r_other for decided pairs, r_a - r_b for ties; labels on d's device)."""
    if r_a.shape != r_b.shape or r_a.shape != labels.shape or r_a.ndim != 1:
        raise ValueError(f"rewards and labels must be 1-D of one length, got {tuple(r_a.shape)}, "
                         f"{tuple(r_b.shape)}, {tuple(labels.shape)}")
    if not bool(((labels >= A_PREFERRED) & (labels <= TIE)).all()):
        raise ValueError(f"labels must be 0 (a), 1 (b) or 2 (tie), got {labels.unique().tolist()}")
    d = r_a.float() - r_b.float()
    labels = labels.to(d.device)  # labels usually come from the CPU collator, rewards from the accelerator
    return torch.where(labels == B_PREFERRED, -d, d), labels


@torch.no_grad()
def pair_stats(d: torch.Tensor, labels: torch.Tensor, k: float) -> dict[str, float]:
    decided, tied = labels != TIE, labels == TIE
    stats = {"num_non_tied": float(decided.sum()), "num_tied": float(tied.sum())}
    if decided.any():
        stats["accuracy"] = float((d[decided] > 0).float().mean())
        stats["margin"] = float(d[decided].mean())
    if tied.any():
        stats["tie_abs_margin"] = float(d[tied].abs().mean())
        if k > 1:
            stats["tie_within_margin"] = float((d[tied].abs() < math.log(k)).float().mean())
    return stats


def bt_ties_loss(r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor, k: float = 5.0) -> tuple[torch.Tensor, dict[str, float]]:
    """r_a, r_b [N] rewards, labels [N] long -> (mean loss, stats)."""
    if k <= 1:
        raise ValueError(f"bt_ties_loss needs k > 1 (k = 1 gives ties probability 0), got {k}")
    d, labels = _preferred_margin(r_a, r_b, labels)
    log_k = math.log(k)
    win = -F.logsigmoid(d - log_k)
    tie = -F.logsigmoid(d - log_k) - F.logsigmoid(-d - log_k) - math.log(k * k - 1)
    loss = torch.where(labels == TIE, tie, win).mean()
    return loss, pair_stats(d.detach(), labels, k)


def bradley_terry_loss(r_a: torch.Tensor, r_b: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """-log sigmoid(r_preferred - r_other) over non-tied pairs; tied pairs are ignored (see module doc)."""
    d, labels = _preferred_margin(r_a, r_b, labels)
    decided = labels != TIE
    per_pair = -F.logsigmoid(d) * decided
    loss = per_pair.sum() / decided.sum().clamp(min=1)
    return loss, pair_stats(d.detach(), labels, k=1.0)
