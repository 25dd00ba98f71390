"""From per-sample scores to the numbers of the table: means, standard errors, per-person means,
and each LoRA's win rate against the base (pure functions)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from identity_grpo.report.results import LOWER_IS_BETTER, ModelResult

# Besides the rewards, metrics whose per-sample win rate is reported when measured.
WIN_RATE_MEASURES = ("world_identity", "world_identity_worst", "face_similarity", "face_worst")


def win_rate(candidate: Sequence[float], baseline: Sequence[float], lower_is_better: bool = False) -> float:
    """Share of paired samples where the candidate beats the baseline; a tie counts half."""
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"win_rate: needs two equally long non-empty lists, got {a.shape} and {b.shape}")
    if lower_is_better:
        a, b = -a, -b
    return float(((a > b).sum() + 0.5 * (a == b).sum()) / a.size)


def win_rate_metrics(metrics: Sequence[str]) -> list[str]:
    """The total reward, each reward when there are several (one alone is the total scaled), the measures."""
    rewards = [m for m in metrics if m.startswith("reward/")]
    chosen = (["reward"] if "reward" in metrics else []) + (rewards if len(rewards) > 1 else [])
    return chosen + [m for m in WIN_RATE_MEASURES if m in metrics]


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean (sample std / sqrt(n)); 0 for a single value."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0


def person_means(per_person: Sequence[np.ndarray]) -> list[float]:
    """Mean of person k (left to right) over the clips that have a k-th person."""
    width = max(len(p) for p in per_person)
    return [float(np.mean([p[k] for p in per_person if len(p) > k])) for k in range(width)]


@dataclass
class ModelSummary:
    name: str
    count: int  # samples
    means: dict[str, float]  # metric -> mean over samples
    sems: dict[str, float]  # metric -> standard error of that mean
    person_means: dict[str, list[float]]  # measure -> mean of person 1, 2, ... (left to right)
    all_people: dict[str, np.ndarray]  # measure -> [people over all clips] float64 (for histograms)
    win_rates: dict[str, float] = field(default_factory=dict)  # metric -> win rate against the base (LoRAs only)


def summarize(results: Sequence[ModelResult]) -> list[ModelSummary]:
    """One summary per model; results[0] is the base every other model is compared with."""
    if not results:
        raise ValueError("summarize: no models")
    base = results[0]
    summaries = []
    for i, result in enumerate(results):
        if result.keys != base.keys:
            raise ValueError(f"summarize: {result.name!r} was evaluated on other samples than {base.name!r}")
        summary = ModelSummary(
            name=result.name,
            count=len(result.keys),
            means={m: float(np.mean(v)) for m, v in result.scores.items()},
            sems={m: standard_error(v) for m, v in result.scores.items()},
            person_means={m: person_means(v) for m, v in result.per_person.items()},
            all_people={m: np.concatenate(v) for m, v in result.per_person.items()},
        )
        if i:
            summary.win_rates = {
                m: win_rate(result.scores[m], base.scores[m], m in LOWER_IS_BETTER)
                for m in win_rate_metrics([m for m in result.scores if m in base.scores])
            }
        summaries.append(summary)
    return summaries
