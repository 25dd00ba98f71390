"""Folders of models built on first use (toy generators, the world's face models), keyed by a
hash of their settings and safe to build from several processes at once:

    folder = root / f"vae-{settings_hash(settings)}"
    if not is_complete(folder, "pretrain.json"):
        tmp = scratch_folder(folder)             # build everything in here, the marker file last
        ...
        publish(tmp, folder, "pretrain.json")    # rename into place; a faster process's copy wins

A reader checks the marker, never a half-written folder: the rename is atomic on one filesystem.

Building runs under `build_threads()`: a CPU kernel splits its sums by the number of intra-op
threads, so the same pretraining with 1 and with 2 threads gives different weights; with the
count fixed, every machine (same torch build and CPU instruction set) builds the same model.
One thread: no split at all, and no threads spinning on a core another process holds (on this
shared 2-core machine under load, the two tiny builds of tests/generators/
test_toy_pretraining_determinism.py took 8 s with one thread, 126 s with two).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

BUILD_THREADS = 1  # intra-op threads of every first-use build, whatever the machine has (see above)


def settings_hash(settings: dict) -> str:
    """12 hex digits of the settings' canonical JSON: a changed setting is a new folder."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def is_complete(folder: Path, marker: str) -> bool:
    return (folder / marker).exists()


def scratch_folder(folder: Path) -> Path:
    """An empty sibling of `folder`, private to this process, to build it in."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, final: Path, marker: str) -> None:
    """Rename a finished folder into place; if another process got there first, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not is_complete(final, marker):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def build_threads(threads: int = BUILD_THREADS) -> Iterator[None]:
    """Run a first-use build with a fixed number of torch intra-op threads, then restore the caller's."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
