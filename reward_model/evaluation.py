"""The end-of-run evaluation: the learned model and the non-learned baseline on the same pairs.

Tie thresholds are calibrated on validation pairs for each scorer and applied unchanged to
the held-out test pairs. Prints the comparison table and returns the metrics that go into
`metrics.json`. A pair whose clip or reference cannot be read is left out of the accuracies,
named in a warning and counted by reason (`unreadable_video`, `unreadable_reference`), as in
training: one bad file costs its pairs, not a finished run.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from reward_model.baseline import HistogramBaselineScorer
from reward_model.pair_metrics import (PairReport, PairScores, SwapReport, calibrate_tie_threshold, clean_clips,
                                       comparison_table, pair_report, print_table, swap_report, swap_rows,
                                       swapped_references)
from identity_grpo.core.config_io import RunFailed
from identity_grpo.core.video import VideoReadError, read_image, read_video

ScoreFn = Callable[[Sequence[np.ndarray], Sequence[Sequence[np.ndarray]], Sequence[str]], np.ndarray]
ClipKey = tuple[str, tuple[str, ...], str]  # video, references, prompt: what a clip's score depends on
SIDES = ("video_a", "video_b")
logger = logging.getLogger(__name__)


class Unreadable(Exception):
    """A clip or reference that cannot be read; `reason` is what the pairs it leaves out are counted under."""

    def __init__(self, reason: str, error: VideoReadError):
        super().__init__(str(error))
        self.reason = reason


def clip_key(row: dict, side: str) -> ClipKey:
    return row[side], tuple(row["references"]), row["prompt"]


def read_clip(key: ClipKey, num_frames: int) -> tuple[np.ndarray, list[np.ndarray]]:
    path, references, _ = key
    try:
        video = read_video(path, num_frames=num_frames)
    except VideoReadError as error:
        raise Unreadable("unreadable_video", error) from error
    try:
        return video, [read_image(r) for r in references]
    except VideoReadError as error:
        raise Unreadable("unreadable_reference", error) from error


def score_clips(score: ScoreFn, keys: list[ClipKey], num_frames: int, batch_size: int = 32,
                desc: str = "scoring") -> tuple[dict[ClipKey, float], dict[ClipKey, Unreadable]]:
    """Score each (video, references, prompt) once -> (scores, the keys that could not be read)."""
    keys = list(dict.fromkeys(keys))
    values: dict[ClipKey, float] = {}
    unreadable: dict[ClipKey, Unreadable] = {}
    for start in tqdm(range(0, len(keys), batch_size), desc=desc, leave=False):
        read = {}
        for key in keys[start : start + batch_size]:
            try:
                read[key] = read_clip(key, num_frames)
            except Unreadable as error:
                unreadable[key] = error
        if read:
            videos, refs = zip(*read.values())
            scores = np.asarray(score(list(videos), list(refs), [key[2] for key in read]), dtype=np.float64)
            values.update(zip(read, scores.tolist()))
    return values, unreadable


def score_rows(score: ScoreFn, rows: list[dict], num_frames: int, batch_size: int = 32, desc: str = "scoring") -> PairScores:
    """Score every distinct clip of `rows` once (clips are shared between pairs) and pair them up.
    Pairs with an unreadable file are left out (PairScores.skipped counts them by reason) and each
    is named in a warning with its row (its position in `rows`) and the file."""
    keys = [clip_key(row, side) for row in rows for side in SIDES]
    values, unreadable = score_clips(score, keys, num_frames, batch_size, desc)
    kept, skipped = [], Counter()
    for number, row in enumerate(rows, 1):
        error = next((unreadable[k] for k in (clip_key(row, side) for side in SIDES) if k in unreadable), None)
        if error is None:
            kept.append(row)
            continue
        skipped[error.reason] += 1
        logger.warning("%s: pair %r (row %d) left out, %s: %s", desc, row["pair_id"], number, error.reason, error)
    return PairScores(np.array([values[clip_key(r, "video_a")] for r in kept]),
                      np.array([values[clip_key(r, "video_b")] for r in kept]), kept, dict(skipped))


def evaluate_scorer(score: ScoreFn, splits: dict[str, list[dict]], num_frames: int,
                    name: str) -> tuple[PairReport, dict[str, dict[str, int]]]:
    """The scorer's report on the test pairs (tie threshold from the validation pairs) and the pairs
    left out of each split, by reason. Raises RunFailed if it scores a clip non-finite: every clip
    read from a file is finite, so such a scorer is broken, and an accuracy computed from NaN
    comparisons would look like a real one."""
    threshold, skipped = 0.0, {}
    if splits.get("val"):
        val = score_rows(score, splits["val"], num_frames, desc=f"{name}: validation")
        require_finite(val, name, "validation")
        threshold, skipped["val"] = calibrate_tie_threshold(val.margin, [r["label"] for r in val.rows]), val.skipped
    test = score_rows(score, splits["test"], num_frames, desc=f"{name}: test")
    require_finite(test, name, "test")
    skipped["test"] = test.skipped
    return pair_report(test, threshold), skipped


def reference_swap(score: ScoreFn, rows: list[dict], num_frames: int, name: str) -> SwapReport:
    """Each clean clip of `rows` scored with its own references and with another clip's
    (pair_metrics.swapped_references; the clip's own prompt kept): does the scorer look at whom
    the references show? Clips with an unreadable file, or with no clip of other people to take
    references from, are left out. Raises RunFailed on a
    non-finite score, as evaluate_scorer."""
    clips = clean_clips(rows)
    partners = swapped_references([references for _, references, _ in clips])
    pairs = [((video, own, prompt), (video, clips[j][1], prompt))
             for (video, own, prompt), j in zip(clips, partners) if j is not None]
    values, _ = score_clips(score, [key for pair in pairs for key in pair], num_frames, desc=f"{name}: reference swap")
    kept = [(own, other) for own, other in pairs if own in values and other in values]
    own, other = np.array([values[a] for a, _ in kept]), np.array([values[b] for _, b in kept])
    if not (np.isfinite(own).all() and np.isfinite(other).all()):
        raise RunFailed(f"the {name} gives non-finite scores in the reference swap")
    return swap_report(own, other)


def validation_metrics(scores: PairScores) -> dict[str, float]:
    """What a periodic validation logs: the accuracies (tie threshold calibrated on the same pairs)
    and the pairs left out (val/skipped/<reason>); with non-finite scores their count instead of
    accuracies (NaN margins compare as wrong or tied: an accuracy from them would mean nothing)."""
    logged = {f"val/skipped/{reason}": n for reason, n in sorted(scores.skipped.items())}
    non_finite = int((~np.isfinite(scores.margin)).sum())
    if non_finite:
        return {"val/non_finite_pairs": non_finite, **logged}
    if scores.rows:
        report = pair_report(scores, calibrate_tie_threshold(scores.margin, [r["label"] for r in scores.rows]))
        logged.update({"val/accuracy": report.accuracy, "val/tie_accuracy": report.tie_accuracy})
    return logged


def require_finite(scores: PairScores, name: str, split: str) -> None:
    finite = np.isfinite(scores.score_a) & np.isfinite(scores.score_b)
    if not finite.all():
        raise RunFailed(f"the {name} gives non-finite scores in {int((~finite).sum())} of {finite.size} {split} pairs")


def left_out_line(skipped: dict[str, dict[str, int]]) -> str:
    """The line under the table, e.g. 'left out (unreadable files, see the warnings): test 1 unreadable_video'."""
    parts = [f"{split} {n} {reason}" for split, counts in skipped.items() for reason, n in sorted(counts.items())]
    return f"left out (unreadable files, see the warnings): {', '.join(parts)}" if parts else ""


def compare_with_baseline(score: ScoreFn, splits: dict[str, list[dict]], num_frames: int) -> dict:
    """The learned scorer against the colour-histogram baseline on the test pairs; prints the table
    (with the pairs left out on a line under it) and returns metrics.json's evaluation part."""
    learned, skipped = evaluate_scorer(score, splits, num_frames, "reward model")
    baseline, _ = evaluate_scorer(HistogramBaselineScorer().score, splits, num_frames, "baseline")  # the same files
    rows = comparison_table({"reward model": learned, "colour-histogram baseline": baseline})
    swaps = {name: reference_swap(scorer, splits["test"], num_frames, name)
             for name, scorer in (("reward model", score), ("baseline", HistogramBaselineScorer().score))}
    rows += swap_rows(swaps["reward model"], swaps["baseline"])
    print_table(rows, title=f"Held-out pairs ({learned.num_pairs}), accuracy")
    line = left_out_line(skipped)
    if line:
        print(line)
    return {
        "reference_swap": swaps["reward model"].to_dict(),
        "baseline_reference_swap": swaps["baseline"].to_dict(),
        "accuracy": learned.accuracy,
        "tie_accuracy": learned.tie_accuracy,
        "baseline_accuracy": baseline.accuracy,
        "baseline_tie_accuracy": baseline.tie_accuracy,
        "num_test_pairs": learned.num_pairs,
        "num_test_tied_pairs": learned.num_tied,
        "skipped_val_pairs": skipped.get("val", {}),
        "skipped_test_pairs": skipped["test"],
        "reward_model": learned.to_dict(),
        "baseline": baseline.to_dict(),
        "table": rows,
    }


def final_evaluation(cfg, model, splits: dict[str, list[dict]], final_dir: Path, device) -> dict:
    from reward_model.scorer import RewardScorer

    if not splits.get("test"):
        return {}
    metrics = compare_with_baseline(RewardScorer(model, device=device).score, splits, model.config.num_frames)
    return {**metrics, "checkpoint": str(final_dir)}
