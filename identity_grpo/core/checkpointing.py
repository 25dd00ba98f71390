"""Resumable training state for every recipe: complete checkpoints that fall back, no pickle.

    output_dir/checkpoints/step_00000040/
        state.json                      the recipe's RunState (step, data position, log length, ...)
        <part>.json + .safetensors      each part's state dict (LoRA, EMA, optimizer, scheduler, model)
        rng_<process>.json + ...        every process's random generators
        manifest.json                   every file above with its size and sha256, written last

A checkpoint is written into `step_N.tmp/` and renamed when its manifest is in place, so a folder
without `.tmp` and with a manifest that matches its files is complete. Loading takes the newest
complete checkpoint; one whose files do not match its manifest (truncated, corrupted) is named in a
warning and the one before it is used. After a save the oldest complete checkpoints beyond `keep`
are deleted, never the newest one, nor a protected one (e.g. the reward-hacking guard's best step,
which final/ may be exported from: `load_parts` restores chosen parts of one checkpoint). Nothing read back runs code (core/state_files.py); a sharding
engine's own files (DeepSpeed) are checked to load with `torch.load(weights_only=True)` first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from identity_grpo.core.state_files import load_tree, save_tree

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
STATE = "state"  # state.json: the recipe's RunState
logger = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> None: ...


class FolderState(Protocol):
    """A part that writes its own files (collectively, on every process): a sharding engine's state."""

    def save_to(self, folder: Path) -> None: ...
    def load_from(self, folder: Path) -> None: ...


class CheckpointError(RuntimeError):
    """No complete checkpoint could be loaded, though some exist."""


class RngState:
    """This process's random generators: Python's, NumPy's, torch's CPU and CUDA ones."""

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state = {"python": random.getstate(), "numpy": [kind, keys.astype(np.int64), position, has_gauss, gauss],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        random.setstate(state["python"])
        kind, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys).astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Finished checkpoint folders (not yet verified), newest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(folders, key=lambda p: int(p.name[5:]), reverse=True)


def save_checkpoint(accelerator, output_dir: str | Path, step: int, parts: dict[str, Any],
                    run_state: dict, keep: int = 2, protect: frozenset[int] = frozenset()) -> Path:
    """Write a complete checkpoint of `parts` (Stateful: its state_dict taken on every process and
    written by the main one; FolderState: written by every process) and every process's RNG; then
    delete complete ones beyond the newest `keep`, except the steps in `protect`."""
    root = Path(output_dir) / CHECKPOINTS
    final = checkpoint_folder(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a save killed earlier: ours, never complete
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_tree(tmp / f"rng_{accelerator.process_index}", RngState().state_dict())
    for name, part in parts.items():
        if hasattr(part, "save_to"):
            part.save_to(tmp / name)
            continue
        state = part.state_dict()  # on every process: a sharded part gathers its whole state here
        if accelerator.is_main_process:
            save_tree(tmp / name, state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / f"{STATE}.json").write_text(json.dumps(run_state, indent=2))
        write_manifest(tmp, step)
        if final.exists():  # the same step saved again (a rerun of a finished run): replace it
            shutil.rmtree(final)
        tmp.rename(final)
        prune(root, keep, protect)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, output_dir: str | Path, parts: dict[str, Any]) -> dict | None:
    """Restore the newest complete checkpoint into `parts` and this process's RNG; returns its
    RunState (a dict), or None when there is none. A damaged one is skipped with a warning."""
    folders = checkpoint_folders(output_dir)
    for folder in folders:
        problem = verify(folder)
        if problem:
            message = f"checkpoint {folder} is damaged ({problem}); falling back to the one before it"
            logger.warning(message)
            accelerator.print(f"warning: {message}")
            continue
        load_parts(folder, parts)
        rng = folder / f"rng_{accelerator.process_index}"
        if rng.with_suffix(".json").is_file():
            RngState().load_state_dict(load_tree(rng))
        else:  # launched with more processes than saved: the new ones start from the seed
            accelerator.print(f"warning: {folder} has no random state for process {accelerator.process_index}")
        return json.loads((folder / f"{STATE}.json").read_text())
    if folders:
        raise CheckpointError(f"{Path(output_dir) / CHECKPOINTS}: none of the {len(folders)} checkpoints is complete "
                              "(see the warnings above); move the folder away to start over")
    return None


def load_parts(folder: Path, parts: dict[str, Any]) -> None:
    """Restore `parts` (a subset of what was saved) from one checkpoint folder, as saved."""
    for name, part in parts.items():
        if hasattr(part, "load_from"):
            part.load_from(folder / name)
        else:
            part.load_state_dict(load_tree(folder / name))


def checkpoint_folder(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step_{step:08d}"


def write_manifest(folder: Path, step: int) -> None:
    files = {str(p.relative_to(folder)): file_entry(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    tmp.rename(folder / MANIFEST)


def verify(folder: Path) -> str:
    """"" when every file of the manifest is there with its size and hash; else what is wrong."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return "no manifest"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return "unreadable manifest"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['bytes']} were written"
        if file_entry(path)["sha256"] != expected["sha256"]:
            return f"{name} does not match its hash"
    return ""


def file_entry(path: Path) -> dict:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def prune(root: Path, keep: int, protect: frozenset[int] = frozenset()) -> None:
    """Delete checkpoints beyond the newest `keep` complete ones, except protected steps (which do
    not count towards `keep`); incomplete ones older than the newest complete one go too (they can
    never be resumed from). Only our own step_* folders."""
    complete = 0
    for folder in checkpoint_folders(root.parent):
        if verify(folder):
            if complete:
                shutil.rmtree(folder)
            continue
        if int(folder.name[5:]) in protect:
            continue
        complete += 1
        if complete > max(1, keep):
            shutil.rmtree(folder)


def check_weights_only(path: Path, allowed: tuple[type, ...] = ()) -> None:
    """Refuse a pickled file that needs more than tensors, plain containers and the `allowed` classes
    (plain state records, rebuilt from their fields, never by running their code) to load."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means it is not plain data
        raise CheckpointError(f"{path}: refused, it does not load as plain tensors and containers ({error})") from None
