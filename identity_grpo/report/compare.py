"""Side by side: several training runs (GRPO, IPRO, ...) from their metrics.json.

    python -m identity_grpo.report.compare runs/grpo_synthetic_vace runs/ipro_synthetic_vace

prints one row per run: the independent identity measure on held-out identities before -> after
(the relative gain, and how many held-out samples it raised: the win rate against the model before
training, ties counted half), the stage-1 reward model's score before -> after and its win rate,
the KL to the reference at the end and the training wall time; and writes it to runs/comparison.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from identity_grpo.finetune.run_metrics import relative_change

COLUMNS = ("run", "identity before -> after", "identity gain", "identity win rate",
           "reward-model score before -> after", "reward-model win rate", "KL at the end", "training time")
REWARD_MODEL = "eval/reward/reward_model"  # the stage-1 model's own score, whatever else a run's reward adds


def _pair(metrics: dict, name: str) -> str:
    before, after = metrics.get(f"{name}_before"), metrics.get(f"{name}_after")
    if before is None or after is None:
        return "-"
    return f"{before:.4f} -> {after:.4f}"


def _percent(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def _reward_model_win_rate(metrics: dict) -> float | None:
    """The reward model's own win rate when the run logged it separately, else the run's reward's."""
    return metrics.get("win_rates", {}).get(REWARD_MODEL.removeprefix("eval/"), metrics.get("win_rate"))


def _reward_model_pair(metrics: dict) -> str:
    """The reward model's score when the run logged it separately, else the run's reward."""
    before, after = metrics.get("eval_before", {}), metrics.get("eval_after", {})
    if REWARD_MODEL in before and REWARD_MODEL in after:
        return f"{before[REWARD_MODEL]:.4f} -> {after[REWARD_MODEL]:.4f}"
    return _pair(metrics, "reward")


def comparison_row(name: str, metrics: dict) -> list[str]:
    gain = relative_change(metrics.get("identity_before"), metrics.get("identity_after"))
    seconds = metrics.get("train_seconds")
    return [
        name,
        _pair(metrics, "identity"),
        f"{gain:+.1%}" if gain is not None else "-",
        _percent(metrics.get("win_rates", {}).get("identity")),
        _reward_model_pair(metrics),
        _percent(_reward_model_win_rate(metrics)),
        f"{metrics['kl']:.2e}" if metrics.get("kl") is not None else "-",
        f"{seconds / 60:.1f} min" if seconds is not None else "-",
    ]


def comparison_table(runs: dict[str, dict]) -> str:
    """A markdown table, one row per run {name: metrics.json contents}."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(comparison_row(name, metrics)) + " |" for name, metrics in runs.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Compare training runs side by side from their metrics.json.")
    parser.add_argument("runs", nargs="+", help="run folders (each with a metrics.json)")
    parser.add_argument("--out", default="runs/comparison.md", help="where to write the table")
    args = parser.parse_args(argv)
    runs = {}
    for folder in map(Path, args.runs):
        path = folder / "metrics.json"
        if not path.is_file():
            parser.error(f"{path}: not found (did the run finish?)")
        runs[folder.name] = json.loads(path.read_text())
    table = comparison_table(runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
