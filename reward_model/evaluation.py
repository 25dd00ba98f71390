"""The end-of-run evaluation: the learned model and the non-learned baseline on the same pairs.

Tie thresholds are calibrated on validation pairs for each scorer and applied unchanged to
the held-out test pairs. Prints the comparison table and returns the metrics that go into
`metrics.json`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from reward_model.baseline import HistogramBaselineScorer
from reward_model.pair_metrics import PairReport, PairScores, calibrate_tie_threshold, comparison_table, pair_report, print_table
from identity_grpo.core.config_io import RunFailed
from identity_grpo.core.video import read_image, read_video

ScoreFn = Callable[[Sequence[np.ndarray], Sequence[Sequence[np.ndarray]], Sequence[str]], np.ndarray]


def score_rows(score: ScoreFn, rows: list[dict], num_frames: int, batch_size: int = 32, desc: str = "scoring") -> PairScores:
    """Score every distinct clip of `rows` once (clips are shared between pairs) and pair them up."""
    clips: dict[str, tuple[list[str], str]] = {}
    for row in rows:
        for side in ("video_a", "video_b"):
            clips.setdefault(row[side], (row["references"], row["prompt"]))
    paths = list(clips)
    values: dict[str, float] = {}
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, leave=False):
        chunk = paths[start : start + batch_size]
        videos = [read_video(p, num_frames=num_frames) for p in chunk]
        refs = [[read_image(r) for r in clips[p][0]] for p in chunk]
        prompts = [clips[p][1] for p in chunk]
        for path, value in zip(chunk, np.asarray(score(videos, refs, prompts), dtype=np.float64)):
            values[path] = float(value)
    return PairScores(
        np.array([values[r["video_a"]] for r in rows]), np.array([values[r["video_b"]] for r in rows]), rows
    )


def evaluate_scorer(score: ScoreFn, splits: dict[str, list[dict]], num_frames: int, name: str) -> PairReport:
    """The scorer's report on the test pairs (tie threshold from the validation pairs). Raises
    RunFailed if it scores a clip non-finite: every clip read from a file is finite, so such a
    scorer is broken, and an accuracy computed from NaN comparisons would look like a real one."""
    threshold = 0.0
    if splits.get("val"):
        val = score_rows(score, splits["val"], num_frames, desc=f"{name}: validation")
        require_finite(val, name, "validation")
        threshold = calibrate_tie_threshold(val.margin, [r["label"] for r in splits["val"]])
    test = score_rows(score, splits["test"], num_frames, desc=f"{name}: test")
    require_finite(test, name, "test")
    return pair_report(test, threshold)


def require_finite(scores: PairScores, name: str, split: str) -> None:
    finite = np.isfinite(scores.score_a) & np.isfinite(scores.score_b)
    if not finite.all():
        raise RunFailed(f"the {name} gives non-finite scores in {int((~finite).sum())} of {finite.size} {split} pairs")


def final_evaluation(cfg, model, splits: dict[str, list[dict]], final_dir: Path, device) -> dict:
    from reward_model.scorer import RewardScorer

    if not splits.get("test"):
        return {}
    num_frames = model.config.num_frames
    scorer = RewardScorer(model, device=device)
    reports = {
        "reward model": evaluate_scorer(scorer.score, splits, num_frames, "reward model"),
        "colour-histogram baseline": evaluate_scorer(HistogramBaselineScorer().score, splits, num_frames, "baseline"),
    }
    rows = comparison_table(reports)
    print_table(rows, title=f"Held-out pairs ({reports['reward model'].num_pairs}), accuracy")
    learned, baseline = reports["reward model"], reports["colour-histogram baseline"]
    return {
        "accuracy": learned.accuracy,
        "tie_accuracy": learned.tie_accuracy,
        "baseline_accuracy": baseline.accuracy,
        "baseline_tie_accuracy": baseline.tie_accuracy,
        "num_test_pairs": learned.num_pairs,
        "num_test_tied_pairs": learned.num_tied,
        "checkpoint": str(final_dir),
        "reward_model": learned.to_dict(),
        "baseline": baseline.to_dict(),
        "table": rows,
    }
