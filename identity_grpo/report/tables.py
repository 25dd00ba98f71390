"""The numbers on disk: metrics.csv (one row per model), per_sample.csv (one row per model and
sample) and the markdown tables of report.md (one column per model, so many metrics stay readable)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.report.results import LOWER_IS_BETTER, ModelResult
from identity_grpo.report.statistics import ModelSummary

_LABELS = {
    "reward": "total reward (weighted sum of the rewards)",
    "reward/reward_model": "reward-model score",
    "world_identity": "world identity, mean person",
    "world_identity_worst": "world identity, worst person",
    "face_similarity": "face similarity, mean person",
    "face_worst": "face similarity, worst person",
    "face_swaps": "identity swaps per clip",
    "face_missing": "share of frames a person is missing",
    "facesim_arc": "FaceSim-Arc (largest face per frame, OpenS2V-Eval)",
    "facesim_cur": "FaceSim-Cur (largest face per frame, OpenS2V-Eval)",
    "face_similarity_cur": "CurricularFace similarity, mean person",
    "face_worst_cur": "CurricularFace similarity, worst person",
}
_ORDER = ("reward", "reward/", "world_identity", "world_identity_worst", "face_similarity", "face_worst",
          "face_similarity_cur", "face_worst_cur", "facesim_arc", "facesim_cur", "face_swaps", "face_missing")


def metric_label(metric: str) -> str:
    label = _LABELS.get(metric) or (f"reward: {metric.removeprefix('reward/')}" if metric.startswith("reward/") else metric)
    return label + (" (lower is better)" if metric in LOWER_IS_BETTER else "")


def display_labels(metrics: Sequence[str], rewards: Sequence[tuple[str, float]] = ()) -> dict[str, str]:
    """metric -> label; `rewards` (name, weight): a single reward of weight 1 *is* the total, so the
    total takes that reward's name."""
    labels = {m: metric_label(m) for m in metrics}
    if single_reward(rewards):
        labels["reward"] = metric_label(single_reward(rewards))
    return labels


def single_reward(rewards: Sequence[tuple[str, float]]) -> str:
    """"reward/<name>" when the total is exactly one reward of weight 1, else ""."""
    return f"reward/{rewards[0][0]}" if len(rewards) == 1 and rewards[0][1] == 1.0 else ""


def ordered_metrics(metrics: Sequence[str]) -> list[str]:
    """Rewards first (total, then each), then the world measure, then face metrics, then anything else."""
    def rank(m: str) -> tuple[int, str]:
        for i, key in enumerate(_ORDER):
            if m == key or (key.endswith("/") and m.startswith(key)):
                return i, m
        return len(_ORDER), m
    return sorted(metrics, key=rank)


def write_metrics_csv(path: Path, summaries: Sequence[ModelSummary]) -> None:
    """One row per model: samples, the mean and its standard error of every metric, win rates
    against the base (empty for the base), per-person means (`<measure>/person<k>`)."""
    metrics = ordered_metrics(summaries[0].means)
    win = [m for m in metrics if any(m in s.win_rates for s in summaries)]
    people = {m: max(len(s.person_means[m]) for s in summaries) for m in summaries[0].person_means}
    columns = ["model", "samples", *[c for m in metrics for c in (m, f"{m}/sem")], *[f"win_rate/{m}" for m in win],
               *[f"{m}/person{k + 1}" for m, n in people.items() for k in range(n)]]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for s in summaries:
            row = {"model": s.name, "samples": s.count}
            row.update({m: s.means[m] for m in metrics})
            row.update({f"{m}/sem": s.sems[m] for m in metrics})
            row.update({f"win_rate/{m}": v for m, v in s.win_rates.items()})
            row.update({f"{m}/person{k + 1}": v for m, values in s.person_means.items() for k, v in enumerate(values)})
            writer.writerow(row)


def write_per_sample_csv(path: Path, results: Sequence[ModelResult], records: Sequence[PromptRecord]) -> None:
    """One row per model and sample: its prompt, seed, every metric, per-person values (';'-separated)."""
    metrics = ordered_metrics(results[0].scores)
    measures = sorted(results[0].per_person)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "prompt_index", "seed", *metrics, *[f"{m}/per_person" for m in measures], "prompt"])
        for result in results:
            for n, key in enumerate(result.keys):
                writer.writerow([
                    result.name, key.prompt_index, key.seed, *[repr(float(result.scores[m][n])) for m in metrics],
                    *[";".join(repr(float(x)) for x in result.per_person[m][n]) for m in measures],
                    records[key.prompt_index].prompt,
                ])


def _cell(summary: ModelSummary, base: ModelSummary, metric: str) -> str:
    text = f"{summary.means[metric]:.3f} ± {summary.sems[metric]:.3f}"
    if summary is not base:
        change = summary.means[metric] - base.means[metric]
        # A change below the table's precision still shows its size and sign, not "-0.000".
        text += f" ({change:+.3f})" if abs(change) >= 5e-4 or change == 0 else f" ({change:+.1e})"
    return text


def markdown_metrics_table(summaries: Sequence[ModelSummary], rewards: Sequence[tuple[str, float]] = ()) -> str:
    """| metric | base | LoRA ... |: mean ± standard error (LoRAs: change against the base), then win
    rates. `rewards` (name, weight): a single reward of weight 1 *is* the total, so it gets one row."""
    base = summaries[0]
    labels = display_labels(list(base.means), rewards)
    metrics = [m for m in ordered_metrics(base.means) if m != single_reward(rewards)]
    lines = ["| metric | " + " | ".join(f"`{s.name}`" for s in summaries) + " |",
             "|---|" + "---|" * len(summaries)]
    for metric in metrics:
        lines.append(f"| {labels[metric]} | " + " | ".join(_cell(s, base, metric) for s in summaries) + " |")
    for metric in ordered_metrics({m for s in summaries for m in s.win_rates}):
        cells = [f"**{s.win_rates[metric]:.1%}**" if metric in s.win_rates else "—" for s in summaries]
        lines.append(f"| win rate against the base: {labels[metric]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_person_table(summaries: Sequence[ModelSummary], measure: str) -> str:
    """| person | base | LoRA ... |: the measure's mean for the 1st, 2nd, ... person from the left."""
    people = max(len(s.person_means[measure]) for s in summaries)
    lines = ["| person (left to right) | " + " | ".join(f"`{s.name}`" for s in summaries) + " |",
             "|---|" + "---|" * len(summaries)]
    for k in range(people):
        cells = [f"{s.person_means[measure][k]:.3f}" if k < len(s.person_means[measure]) else "—" for s in summaries]
        lines.append(f"| person {k + 1} | " + " | ".join(cells) + " |")
    worst = [f"{np.min(s.all_people[measure]):.3f}" for s in summaries]
    lines.append("| lowest single person over all clips | " + " | ".join(worst) + " |")
    return "\n".join(lines)
