"""What a training run reports at the end (pure functions over evaluation results).

An evaluation result is {"mean": {"eval/<metric>": value}, "per_prompt": {index: {metric: value}},
"non_finite": {"clip": n, "reward": n}, "skipped": {reason: n}} (finetune/evaluation.py; a prompt
lacks the metrics that were non-finite; skipped prompts, e.g. with an unreadable reference image, are
in neither). The summary keeps both evaluations and puts the headline figures at the top:

    reward_before / reward_after      mean weighted reward on held-out prompts
    identity_before / identity_after  mean independent identity measure (the evaluation hook's
                                      "identity"; None without a hook)
    win_rate                          share of held-out prompts whose reward went up (ties half),
                                      over the prompts with a finite reward before and after
    kl                                the KL to the reference at the last training iteration
    within_group_spearman             GRPO on the synthetic world: per reward, the mean over steps of its
                                      within-group rank correlation with the identity measure
    guard_best_step / final_step      with a reward-hacking guard (cfg.guard): the evaluation step
                                      with the best guard value, and the step final/ holds; "guard"
                                      holds the settings, alarms and every judged evaluation
"""
from __future__ import annotations

from typing import Mapping


def win_rate(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]],
             metric: str) -> float | None:
    """Share of prompts where `after` beats `before` on `metric` (equal counts half); both are
    {prompt index: {metric: value}} over the same prompts. Prompts without the metric on either
    side (it was non-finite) are left out; None if none is left."""
    if set(before) != set(after) or not before:
        raise ValueError(f"win_rate: before and after must cover the same non-empty prompts "
                         f"({len(before)} vs {len(after)})")
    both = [k for k in before if metric in before[k] and metric in after[k]]
    if not both:
        return None
    wins = sum(1.0 if after[k][metric] > before[k][metric] else 0.5 if after[k][metric] == before[k][metric] else 0.0
               for k in both)
    return wins / len(both)


def summarize(steps: int, before: dict | None, after: dict | None, last_kl: float | None,
              train_seconds: float | None = None) -> dict:
    """metrics.json: the headline figures first, then both evaluations in full."""
    def mean(result, name):
        return result["mean"].get(f"eval/{name}") if result else None

    summary = {
        "steps": steps,
        "reward_before": mean(before, "reward"),
        "reward_after": mean(after, "reward"),
        "identity_before": mean(before, "identity"),
        "identity_after": mean(after, "identity"),
        "win_rate": None,
        "kl": last_kl,
        "train_seconds": train_seconds,
    }
    if before and after:
        metrics = sorted({name for v in (*before["per_prompt"].values(), *after["per_prompt"].values()) for name in v})
        rates = {name: win_rate(before["per_prompt"], after["per_prompt"], name) for name in metrics}
        summary["win_rate"] = rates.get("reward")
        summary["win_rates"] = {name: rate for name, rate in rates.items() if rate is not None}
    summary["eval_before"] = before["mean"] if before else {}
    summary["eval_after"] = after["mean"] if after else {}
    summary["per_prompt_before"] = before["per_prompt"] if before else {}
    summary["per_prompt_after"] = after["per_prompt"] if after else {}
    summary["non_finite_before"] = before.get("non_finite", {}) if before else {}
    summary["non_finite_after"] = after.get("non_finite", {}) if after else {}
    # The evaluator leaves out the same prompts every time (fixed when the run starts).
    summary["skipped_heldout_prompts"] = (after or before or {}).get("skipped", {})
    return summary


def relative_change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return (after - before) / abs(before)


def summary_table(metrics: dict) -> str:
    """A before/after table of every evaluation metric, for the terminal and the README."""
    before, after = metrics.get("eval_before", {}), metrics.get("eval_after", {})
    names = sorted(set(before) | set(after), key=lambda n: (n != "eval/identity", n != "eval/reward", n))
    lines = ["| metric (held-out) | before | after | change |", "| --- | ---: | ---: | ---: |"]
    for name in names:
        b, a = before.get(name), after.get(name)
        change = relative_change(b, a)
        cells = [f"{v:.4f}" if v is not None else "-" for v in (b, a)]
        lines.append(f"| {name.removeprefix('eval/')} | {cells[0]} | {cells[1]} | "
                     f"{f'{change:+.1%}' if change is not None else '-'} |")
    for kind in ("clip", "reward"):
        b, a = (metrics.get(f"non_finite_{phase}", {}).get(kind, 0) for phase in ("before", "after"))
        if a or b:
            lines.append(f"| prompts with a non-finite {kind} (left out) | {b} | {a} | |")
    for reason, n in sorted(metrics.get("skipped_heldout_prompts", {}).items()):
        lines.append(f"| prompts left out: {reason} | {n} | {n} | |")
    rates = metrics.get("win_rates") or {}
    for name in ("reward", "identity"):
        if name in rates:
            lines.append(f"| win rate ({name}) | | {rates[name]:.1%} | |")
    if metrics.get("kl") is not None:
        lines.append(f"| KL to the reference (last step) | | {metrics['kl']:.3e} | |")
    for name, rho in sorted((metrics.get("within_group_spearman") or {}).items()):
        lines.append(f"| within-group Spearman, {name} vs identity (training samples, mean over steps) | | {rho:+.3f} | |")
    guard = metrics.get("guard")
    if guard and guard.get("best_step") is not None:
        alarms = ", ".join(str(s) for s in guard["alarms"]) or "none"
        lines.append(f"| guard {guard['metric'].removeprefix('eval/')}: best at step {guard['best_step']} "
                     f"({guard['best']:.4f}); final/ holds step {guard['final_step']}; hacking suspected at steps: "
                     f"{alarms} | | | |")
    return "\n".join(lines)
