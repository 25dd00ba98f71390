"""Pretrained folders shipped in the repository (data/pretrained/), so that a fresh clone does not
pay for the synthetic world's first-use pretraining (the toy generators, the world's face models,
the tiny reward backbone: about 25 minutes of a 2-core CPU).

A first-use build's folder is named by a hash of its settings and of the source of the code that
builds it (code_hash.py), and the build is deterministic (cache_folders.build_threads): a shipped
folder with the same name holds exactly what this code would build. So a loader asks first

    folder = shipped_copy(root / f"faces-{hash}") or root / f"faces-{hash}"

which finds data/pretrained/<root's name>/<folder's name> when it is there and every file in it
matches the sha256 that SHA256SUMS (JSON, written by `ship`) records: a truncated copy, a Git LFS
pointer or an edited file is not used, and the loader builds as before. A shipped folder whose code
has changed simply stops matching any name; tests/core/test_shipped_pretrained.py fails until
they are rebuilt:

    python -m identity_grpo.generators.shipped_pretrained   # builds what is missing, ships it

This module only chooses which finished folder to read and never changes what is built, so it is
not building code (code_hash.NOT_BUILDING): editing it keeps every cache key.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from functools import lru_cache
from pathlib import Path

SHIPPED_ROOT = Path(__file__).resolve().parents[2] / "data" / "pretrained"
SUMS = "SHA256SUMS"  # JSON {relative POSIX path: sha256}, written last: a folder without it is not shipped


def file_sums(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder but SUMS, keyed by its POSIX path inside folder."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != SUMS}


@lru_cache(maxsize=None)
def _verified(folder: Path) -> bool:
    sums = folder / SUMS
    if not sums.is_file():
        return False
    try:
        recorded = json.loads(sums.read_text())
    except ValueError:
        return False
    return isinstance(recorded, dict) and recorded == file_sums(folder)


def shipped_copy(folder: str | Path, root: Path | None = None) -> Path | None:
    """The repository's verified copy of the cache folder `folder` (matched by its own name and its
    parent's, e.g. world_faces/faces-<hash>), or None."""
    folder = Path(folder)
    candidate = (root or SHIPPED_ROOT) / folder.parent.name / folder.name
    return candidate if _verified(candidate.resolve()) else None


def ship(folder: Path, root: Path | None = None) -> Path:
    """Copy a finished cache folder into the shipped tree, SUMS last; returns the shipped folder."""
    target = (root or SHIPPED_ROOT) / folder.parent.name / folder.name
    if target.exists():
        if not (target / SUMS).is_file():
            raise FileExistsError(f"{target}: exists and was not written by ship (no {SUMS}); move it away first")
        shutil.rmtree(target)
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(SUMS, "__pycache__"))
    (target / SUMS).write_text(json.dumps(file_sums(target), indent=1, sort_keys=True) + "\n")
    _verified.cache_clear()
    return target


def shipped_folders(root: Path | None = None) -> list[Path]:
    """Every folder `ship` wrote under root (those holding SUMS)."""
    return sorted(p.parent for p in (root or SHIPPED_ROOT).glob(f"*/*/{SUMS}"))
