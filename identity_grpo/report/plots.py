"""The report's figures (matplotlib, no pyplot state): training curves from log.jsonl files,
per-person histograms, and per-sample base-vs-LoRA scatter plots. Each returns what it drew, so
a caller (and a test) knows which panels exist."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from identity_grpo.report.results import ModelResult
from identity_grpo.report.statistics import ModelSummary, win_rate
from identity_grpo.report.tables import metric_label

REWARD_KEYS = ("reward/mean", "train/reward")  # GRPO's group rewards, IPRO's face reward: the first one a log has is drawn
KL_KEYS = ("train/kl_loss", "train/kl", "train/approx_kl")  # the same for the KL
_EVAL_NAMES = {"identity": "world_identity", "identity_worst": "world_identity_worst"}  # trainer hook -> report names
PERSON_MEASURES = {"world_identity": "world identity per person", "face_similarity": "face similarity per person"}


def curve_keys(logs: Mapping[str, Sequence[dict]]) -> list[str]:
    """Training reward, the KL, then every eval/* metric, as far as any log has them; an eval curve
    equal to an earlier one everywhere (the total of a single reward and that reward) is left out."""
    present = {k for entries in logs.values() for e in entries for k in e}
    keys = [k for k in REWARD_KEYS if k in present][:1]
    keys += [k for k in KL_KEYS if k in present][:1]
    for key in sorted(k for k in present if k.startswith("eval/")):
        series = [(e["step"], e.get(key)) for entries in logs.values() for e in entries]
        if not any(series == [(e["step"], e.get(k)) for entries in logs.values() for e in entries] for k in keys):
            keys.append(key)
    return keys


def run_key(entries: Sequence[dict], key: str) -> str:
    """The key one run logs for a panel: a run's own training reward / KL where runs of different
    methods log them under different names (GRPO's reward/mean, IPRO's train/reward)."""
    for group in (REWARD_KEYS, KL_KEYS):
        if key in group:
            return next((k for k in group if any(k in e for e in entries)), key)
    return key


def curve_title(key: str, labels: Mapping[str, str] | None = None) -> str:
    """A panel's title; `labels` (report metric -> label) name the eval/* metrics like the table does."""
    if key in REWARD_KEYS:
        return "training reward (each run's own, mean over the step's samples)"
    if key in KL_KEYS:
        return "KL to the base model (each run's own)"
    name = key.removeprefix("eval/")
    name = _EVAL_NAMES.get(name, name)
    return "held-out: " + (labels or {}).get(name, metric_label(name))


def _keep_small_changes_small(ax, values: np.ndarray) -> None:
    """Autoscaling blows a change in the 4th digit up to the full height; keep the y range at
    least 5% of the values' size so a flat curve looks flat."""
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    span = max(high - low, 0.05 * max(abs(low), abs(high)), 1e-12)
    middle = (low + high) / 2
    ax.set_ylim(middle - 0.6 * span, middle + 0.6 * span)


def _grid(count: int, columns: int = 3, size: tuple[float, float] = (4.2, 3.0)) -> tuple[Figure, list]:
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


def plot_curves(logs: Mapping[str, Sequence[dict]], path: Path, labels: Mapping[str, str] | None = None) -> list[str]:
    """One panel per curve key, one line per run (label -> log entries); nothing is written when
    no log has any of the keys. Returns the keys drawn."""
    keys = curve_keys(logs)
    if not keys:
        return []
    figure, axes = _grid(len(keys))
    for key, ax in zip(keys, axes):
        drawn = []
        for run, (label, entries) in enumerate(logs.items()):
            own = run_key(entries, key)
            kept = [e for e in entries if e.get(own) is not None]
            if not kept:
                continue
            steps = np.asarray([e["step"] for e in kept], dtype=float)
            values = np.asarray([e[own] for e in kept], dtype=float)
            few = len(kept) < 12  # evaluations are sparse: show each one
            color = f"C{run}"  # a run keeps its colour in panels where other runs have no curve
            ax.plot(steps, values, marker="o" if few else None, markersize=4, label=label, color=color)
            drawn.append(values)
            if own == "reward/mean":  # the spread of the step's samples
                spread = np.asarray([e.get("reward/std", np.nan) for e in kept], dtype=float)
                ax.fill_between(steps, values - spread, values + spread, alpha=0.2, color=color)
                drawn += [values - spread, values + spread]
        if drawn:
            _keep_small_changes_small(ax, np.concatenate(drawn))
        ax.set_title(curve_title(key, labels), fontsize=10)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn and len(logs) > 1:  # every panel says whose curves it has (runs may log different keys)
            ax.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    return keys


def plot_person_histograms(summaries: Sequence[ModelSummary], path: Path) -> list[str]:
    """Per measure, the distribution of per-person values over all clips, one outline per model,
    its mean dashed. Returns the measures drawn (none: nothing written)."""
    measures = [m for m in PERSON_MEASURES if m in summaries[0].all_people]
    if not measures:
        return []
    figure, axes = _grid(len(measures), columns=2, size=(5.5, 3.4))
    for measure, ax in zip(measures, axes):
        values = [s.all_people[measure] for s in summaries]
        low, high = min(map(np.min, values)), max(map(np.max, values))
        if measure == "world_identity":  # a [0, 1] score: start at 0, end at the next tenth above the data
            low, high = 0.0, min(1.0, np.ceil(high * 10 + 1e-9) / 10)
        bins = np.linspace(low, high if high > low else low + 1e-6, 21)
        # Bars side by side: outlines of nearly equal distributions hide each other.
        _, _, bars = ax.hist(values, bins=bins, label=[s.name for s in summaries])
        for data, group in zip(values, bars):
            ax.axvline(float(np.mean(data)), color=group.patches[0].get_facecolor(), linestyle="--", linewidth=1.2)
        ax.set_title(PERSON_MEASURES[measure] + " (dashed: mean)", fontsize=10)
        ax.set_xlabel("score (higher keeps the person better)")
        ax.set_ylabel("people")
        ax.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    return measures


def plot_paired_scores(results: Sequence[ModelResult], metrics: Sequence[str], path: Path,
                       labels: Mapping[str, str] | None = None) -> list[str]:
    """Per metric, each sample as a point: x its score under the base model, y how much a LoRA
    changed it (same prompt and noise); points above the zero line are samples the LoRA improved.
    Differences, not the two scores, so that small changes stay visible. Returns the metrics drawn."""
    base, loras = results[0], results[1:]
    metrics = [m for m in metrics if m in base.scores]
    if not loras or not metrics:
        return []
    figure, axes = _grid(len(metrics), columns=3, size=(4.4, 3.4))
    for metric, ax in zip(metrics, axes):
        ax.axhline(0.0, color="grey", linewidth=1)
        for lora in loras:
            rate = win_rate(lora.scores[metric], base.scores[metric])
            ax.scatter(base.scores[metric], lora.scores[metric] - base.scores[metric], s=18, alpha=0.8,
                       label=f"{lora.name} (better on {rate:.0%})")
        ax.set_title((labels or {}).get(metric, metric_label(metric)), fontsize=10)
        ax.set_xlabel(f"score of {base.name}")
        ax.set_ylabel("LoRA minus base")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    return metrics
