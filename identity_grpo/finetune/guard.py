"""The reward-hacking guard: a held-out metric the policy is not trained on (the synthetic world's
independent identity measure, eval/identity; on real data a face-similarity score), watched at
every evaluation beside the training reward as the evaluation measures it.

    best    the evaluation with the highest guard value so far (the earliest of equals)
    drop    (best guard - this guard) / |best guard|: how far the guard fell below its best
    hacking the reward is above its value at the best evaluation while the drop exceeds
            guard.max_drop: the policy is pleasing its reward at the expense of what the reward
            stands for

The recipe (finetune/recipe.py) warns and logs (guard/*) at each evaluation, keeps the checkpoint
of the best evaluation from being pruned, and exports it as final/ when guard.final is best_guard.
Pure functions over plain records; the history lives in the run state, so a resumed run keeps it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GuardPoint:
    step: int  # training steps done at the evaluation
    reward: float  # the training reward, evaluated on held-out prompts
    guard: float  # the guard metric there


@dataclass(frozen=True)
class GuardVerdict:
    point: GuardPoint
    best: GuardPoint  # the best evaluation so far, this one included
    drop: float  # relative fall of the guard below its best (0 at the best)
    hacking: bool

    @property
    def new_best(self) -> bool:
        return self.best == self.point


def best_point(points: list[GuardPoint]) -> GuardPoint:
    """The point with the highest guard value; the earliest of equal ones (no later step wins a tie)."""
    return max(points, key=lambda p: p.guard)  # max keeps the first of equal keys


def relative_drop(best: float, value: float) -> float:
    """(best - value) / |best|; with a best of exactly 0, any fall counts as a drop of 1 (100%)."""
    if best == 0:
        return 1.0 if value < 0 else 0.0
    return (best - value) / abs(best)


def judge(history: list[GuardPoint], point: GuardPoint, max_drop: float) -> GuardVerdict:
    """The verdict on a new evaluation, given the earlier ones."""
    best = best_point([*history, point])
    drop = relative_drop(best.guard, point.guard)
    return GuardVerdict(point, best, drop, hacking=point.reward > best.reward and drop > max_drop)


def log_values(verdict: GuardVerdict) -> dict[str, float]:
    """What log.jsonl / wandb get at each evaluation (guard/hacking: 1 when the guard fired)."""
    return {"guard/value": verdict.point.guard, "guard/best": verdict.best.guard,
            "guard/best_step": verdict.best.step, "guard/drop": verdict.drop, "guard/hacking": float(verdict.hacking)}


def warning(verdict: GuardVerdict, metric: str, reward: str) -> str:
    """The one line printed when the guard fires."""
    p, b = verdict.point, verdict.best
    return (f"warning: reward hacking suspected at step {p.step}: {reward} rose {b.reward:.4g} -> {p.reward:.4g} "
            f"while the guard {metric} fell {verdict.drop:.1%} below its best ({b.guard:.4g} at step {b.step} -> "
            f"{p.guard:.4g})")


def history_record(points: list[GuardPoint]) -> list[dict]:
    return [asdict(p) for p in points]


def history_from_record(record: list[dict]) -> list[GuardPoint]:
    return [GuardPoint(**p) for p in record]
