"""An exclusive lock on a folder, held across processes, for folders that several runs share:

    with folder_lock("data/synthetic/grpo"):
        write_world_manifests("data/synthetic/grpo", ...)   # one run writes, the others then find the files

The lock is an advisory flock on `folder/.lock` (created if missing, never removed: another run may
be waiting on it). POSIX only, like the launchers.
"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Block until no other holder (process or thread) has folder's lock, hold it inside the block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a") as handle:  # each open is its own lock owner, threads included
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
