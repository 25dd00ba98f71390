"""Pairwise evaluation of any scorer: accuracy tables by source, distortion kind and severity.

Everything here works on plain lists of manifest rows and per-video scores, so the learned
model and the non-learned baseline are judged by exactly the same code.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

SEVERITY_BINS = ((0.0, 1 / 3, "mild"), (1 / 3, 2 / 3, "medium"), (2 / 3, 1.0 + 1e-9, "severe"))


@dataclass
class PairScores:
    """Scores of both videos of N pairs and the pairs' manifest rows."""

    score_a: np.ndarray  # [N] float
    score_b: np.ndarray  # [N] float
    rows: list[dict]  # N manifest rows (label, source, distortion, severity, ...)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> pairs left out (a file could not be read)

    @property
    def margin(self) -> np.ndarray:  # [N] r_a - r_b
        return self.score_a - self.score_b


@dataclass
class Accuracy:
    correct: int = 0
    total: int = 0

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else float("nan")


@dataclass
class PairReport:
    accuracy: float  # non-tied pairs: sign of the margin agrees with the label
    tie_accuracy: float  # tied pairs whose |margin| is below the tie threshold
    tie_threshold: float
    num_pairs: int
    num_tied: int
    by_source: dict[str, Accuracy] = field(default_factory=dict)
    by_distortion: dict[str, Accuracy] = field(default_factory=dict)
    by_severity: dict[str, Accuracy] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def table(t: dict[str, Accuracy]) -> dict:
            return {k: {"accuracy": v.value, "num_pairs": v.total} for k, v in sorted(t.items())}

        return {
            "accuracy": self.accuracy,
            "tie_accuracy": self.tie_accuracy,
            "tie_threshold": self.tie_threshold,
            "num_pairs": self.num_pairs,
            "num_tied": self.num_tied,
            "by_source": table(self.by_source),
            "by_distortion": table(self.by_distortion),
            "by_severity": table(self.by_severity),
        }


def severity_bin(severity: float | None) -> str | None:
    if severity is None or (isinstance(severity, float) and math.isnan(severity)):
        return None
    for low, high, name in SEVERITY_BINS:
        if low <= severity < high:
            return name
    return None


def calibrate_tie_threshold(margins: np.ndarray, labels: Sequence[str]) -> float:
    """The |margin| below which a pair is called a tie, chosen to maximise 3-way accuracy.

    Scorers live on different scales (a BTT-trained model, a histogram similarity), so each
    gets its own threshold, picked on validation pairs and then applied unchanged to test pairs.
    """
    abs_margins = np.abs(np.asarray(margins, dtype=np.float64))
    labels = np.asarray(labels)
    if not (labels == "tie").any():
        return 0.0
    predicted_win = np.where(np.asarray(margins) > 0, "a", "b")
    candidates = np.concatenate([[0.0], np.sort(abs_margins) + 1e-12])
    best, best_acc = 0.0, -1.0
    for threshold in candidates:
        predicted = np.where(abs_margins < threshold, "tie", predicted_win)
        acc = float((predicted == labels).mean())
        if acc > best_acc:
            best, best_acc = float(threshold), acc
    return best


def pair_report(scores: PairScores, tie_threshold: float) -> PairReport:
    margins = scores.margin
    report = PairReport(float("nan"), float("nan"), tie_threshold, len(scores.rows), 0)
    overall, ties = Accuracy(), Accuracy()
    by_source: dict[str, Accuracy] = defaultdict(Accuracy)
    by_distortion: dict[str, Accuracy] = defaultdict(Accuracy)
    by_severity: dict[str, Accuracy] = defaultdict(Accuracy)
    for row, margin in zip(scores.rows, margins):
        label = row["label"]
        if label == "tie":
            hit = abs(margin) < tie_threshold
            ties.correct += int(hit)
            ties.total += 1
            continue
        hit = (margin > 0) == (label == "a")
        groups = [overall, by_source[row.get("source") or "unknown"], by_distortion[row.get("distortion") or "unknown"]]
        severity = severity_bin(row.get("severity"))
        if severity:
            groups.append(by_severity[severity])
        for acc in groups:
            acc.correct += int(hit)
            acc.total += 1
    report.accuracy, report.tie_accuracy, report.num_tied = overall.value, ties.value, ties.total
    report.by_source, report.by_distortion, report.by_severity = dict(by_source), dict(by_distortion), dict(by_severity)
    return report


@dataclass
class SwapReport:
    """Clean clips scored with their own references and with another clip's (the clip's prompt kept)."""

    accuracy: float  # share of clips scored higher with their own references
    mean_margin: float  # mean of own - other
    num_clips: int

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "mean_margin": self.mean_margin, "num_clips": self.num_clips}


def clean_clips(rows: list[dict]) -> list[tuple[str, tuple[str, ...], str]]:
    """(video, references, prompt) of every clean clip in `rows`, each once, in row order: the
    preferred clip of a pair whose other clip is the only one changed (severity_other 0: clean
    vs distorted, stranger, other people) and both clips of a clean tie. Rows without these
    fields (real data) give none."""
    clips = []
    for row in rows:
        if row["label"] == "tie":
            sides = ["video_a", "video_b"] if row.get("distortion") == "clean" else []
        else:
            sides = [f"video_{row['label']}"] if row.get("severity_other") == 0 else []
        clips += [(row[side], tuple(row["references"]), row["prompt"]) for side in sides]
    return list(dict.fromkeys(clips))


def swapped_references(references: list[tuple[str, ...]]) -> list[int | None]:
    """For clip i, the index of the clip whose references it is scored with: the next one (cyclically)
    with as many references and none in common, else the next one with no reference in common,
    else None (no clip shows other people: it is left out)."""
    partners = []
    for i, own in enumerate(references):
        order = [(i + k) % len(references) for k in range(1, len(references))]
        disjoint = [j for j in order if not set(references[j]) & set(own)]
        same_count = [j for j in disjoint if len(references[j]) == len(own)]
        partners.append((same_count or disjoint or [None])[0])
    return partners


def swap_report(own: np.ndarray, other: np.ndarray) -> SwapReport:
    """own, other [N]: each clip's score with its own and with the other clip's references."""
    margin = np.asarray(own, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    if not len(margin):
        return SwapReport(float("nan"), float("nan"), 0)
    return SwapReport(float((margin > 0).mean()), float(margin.mean()), len(margin))


def comparison_table(reports: dict[str, PairReport]) -> list[list[str]]:
    """Rows of a printable table: one line per slice, one column per scorer."""
    names = list(reports)
    header = ["slice", *names, "pairs"]
    first = reports[names[0]]

    def line(label: str, get: Callable[[PairReport], Accuracy | float], count: int) -> list[str]:
        cells = []
        for name in names:
            value = get(reports[name])
            value = value.value if isinstance(value, Accuracy) else value
            cells.append("-" if value is None or math.isnan(value) else f"{100 * value:.1f}%")
        return [label, *cells, str(count)]

    rows = [header, line("all non-tied pairs", lambda r: r.accuracy, first.num_pairs - first.num_tied)]
    rows.append(line("ties", lambda r: r.tie_accuracy, first.num_tied))
    for title, attr in (("source", "by_source"), ("distortion", "by_distortion"), ("severity", "by_severity")):
        for key, acc in sorted(getattr(first, attr).items()):
            rows.append(line(f"{title}: {key}", lambda r, a=attr, k=key: getattr(r, a).get(k, Accuracy()), acc.total))
    return rows


def swap_rows(*reports: SwapReport) -> list[list[str]]:
    """The reference-swap lines under the comparison table: accuracy and mean margin per scorer."""
    def cell(value: float, percent: bool) -> str:
        return "-" if math.isnan(value) else (f"{100 * value:.1f}%" if percent else f"{value:+.3f}")

    return [["reference swap: own > other references", *(cell(r.accuracy, True) for r in reports), str(reports[0].num_clips)],
            ["reference swap: mean margin (own - other)", *(cell(r.mean_margin, False) for r in reports), str(reports[0].num_clips)]]


def print_table(rows: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(rows[0]):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows[1:]:
        table.add_row(*row)
    Console().print(table)
