"""Side by side: several training runs (GRPO, IPRO, ...) from their metrics.json.

    python -m identity_grpo.synthetic.compare runs/grpo_synthetic_vace runs/ipro_synthetic_vace

prints one row per run: the independent identity measure on held-out identities before -> after
(and the relative gain), the reward-model score before -> after, the win rate, the KL to the
reference at the end and the training wall time; and writes it to runs/comparison.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from identity_grpo.run_summary import relative_change

COLUMNS = ("run", "identity before -> after", "identity gain", "reward before -> after", "win rate (reward)",
           "KL at the end", "training time")


def _pair(metrics: dict, name: str) -> str:
    before, after = metrics.get(f"{name}_before"), metrics.get(f"{name}_after")
    if before is None or after is None:
        return "-"
    return f"{before:.4f} -> {after:.4f}"


def comparison_row(name: str, metrics: dict) -> list[str]:
    gain = relative_change(metrics.get("identity_before"), metrics.get("identity_after"))
    seconds = metrics.get("train_seconds")
    return [
        name,
        _pair(metrics, "identity"),
        f"{gain:+.1%}" if gain is not None else "-",
        _pair(metrics, "reward"),
        f"{metrics['win_rate']:.1%}" if metrics.get("win_rate") is not None else "-",
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
