"""Experiment tracking shared by both stages: wandb (offline unless the user logged in) + a JSONL log.

The JSONL file in the run folder is what plots and reports read, so a run is fully
inspectable without a wandb account.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class RunLogger:
    def __init__(self, output_dir: str | Path, project: str, mode: str, config: dict, run_name: str = "", enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "log.jsonl"
        self.wandb_run = None
        self.lines = 0  # lines of log.jsonl this run stands on (see keep_first)
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if mode != "disabled":
            import wandb

            # Offline unless the user explicitly chose online (and is logged in); never prompt.
            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                project=project,
                mode=mode,
                name=run_name or None,
                dir=str(Path(output_dir)),
                config=config,
                reinit="finish_previous",
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if hasattr(v, "item") else v) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        self.lines += 1
        if self.wandb_run is not None:
            self.wandb_run.log(clean, step=step)

    def keep_first(self, lines: int) -> None:
        """Cut log.jsonl back to its first `lines` lines (a resumed run logs the rest again, once)."""
        if not self.enabled:
            return
        kept = self.path.read_text().splitlines(keepends=True)[:lines] if self.path.is_file() else []
        self.path.write_text("".join(kept))
        self.lines = len(kept)

    def log_video(self, key: str, path: str | Path, step: int) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Video(str(path))}, step=step)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
