"""A plan as the text table the planner prints (and the README shows)."""
from __future__ import annotations

from identity_grpo.plan.budget import GB, Plan

WIDTH = 100


def _row(label: str, value: str) -> str:
    return f"{label:<{WIDTH - 10}}{value:>10}"


def render(plan: Plan, coefficients: dict) -> str:
    launch = plan.launch
    lines = [f"{plan.config} ({plan.recipe}) on {launch.gpus} x {launch.gpu_memory:g} GB, per GPU: "
             "estimate (CPU-measured coefficients)",
             f"coefficients: {coefficients['note']} (regenerate: {coefficients['command']})", "", _row("resident", "GB")]
    lines += [_row(f"  {item.name}", f"{item.bytes / GB:.2f}") for item in plan.resident]
    lines += [_row("  total resident", f"{plan.resident_total / GB:.2f}"), "", _row("phase (on top of resident)", "GB")]
    for phase in plan.phases:
        lines.append(_row(f"  {phase.name}", f"{phase.total / GB:.2f}"))
        lines += [_row(f"    {item.name}", f"{item.bytes / GB:.2f}") for item in phase.items]
    verdict = "fits" if plan.refusal() is None else "DOES NOT FIT"
    lines += ["", f"peak: {plan.peak / GB:.1f} GB in '{plan.peak_phase.name}' of {plan.usable / GB:.1f} GB usable: "
              f"{verdict}", "assumptions:"]
    lines += [f"  - {line}" for line in plan.assumptions]
    return "\n".join(lines)
