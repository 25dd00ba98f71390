"""Resumable training state for both stages, written so a finished checkpoint is never lost.

`save_training_state` writes into a temporary folder next to the target and swaps it in with
renames: if the process dies mid-save, the previous complete state is still on disk.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

STATE_DIR = "state"
META_FILE = "trainer_state.json"


def save_training_state(accelerator, output_dir: str | Path, meta: dict[str, Any]) -> Path:
    """accelerate state (model, optimizer, scheduler, RNG, registered objects) + meta JSON."""
    target = Path(output_dir) / STATE_DIR
    tmp = target.with_name(STATE_DIR + ".tmp")
    old = target.with_name(STATE_DIR + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def load_training_state(accelerator, output_dir: str | Path) -> dict[str, Any] | None:
    """Restore the latest complete state under output_dir; returns its meta, or None if there is none."""
    output_dir = Path(output_dir)
    for candidate in (output_dir / STATE_DIR, output_dir / (STATE_DIR + ".old")):
        meta_path = candidate / META_FILE
        if meta_path.is_file():
            accelerator.load_state(str(candidate))
            return json.loads(meta_path.read_text())
    return None
