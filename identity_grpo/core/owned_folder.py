"""Output folders that a builder owns: every file it writes is listed, with its size, in a
manifest inside the folder, so that a rebuild removes its own files and nothing else, and a
folder holding anyone else's files is refused before anything in it is changed.

    folder = claim(out_dir, "reward_model.build_pairs")   # BuildRefused if the folder is not ours
    folder.remove(folder.listed())                         # an earlier build's files, only those
    folder.begin(settings)
    folder.write({"train.jsonl": lambda path: ...})        # listed before written, sizes after
    folder.finish()

A path is listed (saved) before its file is written, size null until recorded, so even a
killed build leaves no file of its own that a later one does not know about. Sizes and removals
are saved with the next listing or at the end: a killed build loses at most the sizes of its
last files, which are then not intact and are redone. One save per write keeps a builder of
thousands of clips from rewriting its growing manifest several times per clip.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

MANIFEST = ".identity_grpo_build.json"
_TEMPORARY = MANIFEST + ".tmp"


class BuildRefused(ValueError):
    """A build stopped before it changed anything: an argument it cannot use, or an output
    folder holding files it did not write. The message is one line."""


@dataclass
class OwnedFolder:
    root: Path
    writer: str  # the command that owns the folder: another command's folder is refused too
    settings: dict | None = None
    complete: bool = False
    files: dict[str, int | None] = field(default_factory=dict)  # relative path -> size (None: not yet written)

    def listed(self, *under: str) -> list[str]:
        """Listed paths, all or those starting with one of `under` (name folders with a trailing /)."""
        return [path for path in self.files if not under or path.startswith(under)]

    def intact(self, paths: Iterable[str | Path]) -> bool:
        """Every one of `paths` was written by this folder's builder and still has its recorded size."""
        for path in map(_relative, paths):
            size, file = self.files.get(path), self.root / path
            if size is None or not file.is_file() or file.stat().st_size != size:
                return False
        return True

    def remove(self, paths: Iterable[str | Path]) -> None:
        """Delete listed files among `paths` and the folders they leave empty; nothing unlisted."""
        paths = [path for path in map(_relative, paths) if path in self.files]
        if paths and self.complete:
            self.complete = False
            self.save()  # first: a build killed while removing is not taken for a finished one
        for path in paths:
            file = self.root / path
            file.unlink(missing_ok=True)
            for parent in file.parents:
                if parent == self.root:
                    break
                try:
                    parent.rmdir()  # only when empty: a user's file keeps its folder
                except OSError:
                    break
            del self.files[path]

    def begin(self, settings: dict) -> None:
        """Mark a new build with these settings as under way (creates the folder)."""
        self.settings, self.complete = settings, False
        self.save()

    def plan(self, paths: Iterable[str | Path]) -> None:
        """List paths before their files are written."""
        self.files.update({path: None for path in map(_relative, paths)})
        self.save()

    def record(self, paths: Iterable[str | Path]) -> None:
        """Record the sizes of planned files once they are written (saved with the next save)."""
        for path in map(_relative, paths):
            if path not in self.files:
                raise ValueError(f"{path}: written without being planned")
            self.files[path] = (self.root / path).stat().st_size

    def write(self, outputs: dict[str | Path, Callable[[Path], object]]) -> None:
        """Plan, write (each callable gets the file's full path, its folder made) and record files."""
        self.plan(outputs)
        for path, write in outputs.items():
            (self.root / path).parent.mkdir(parents=True, exist_ok=True)
            write(self.root / path)
        self.record(outputs)

    def finish(self) -> None:
        self.complete = True
        self.save()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        record = {"writer": self.writer, "settings": self.settings, "complete": self.complete, "files": self.files}
        temporary = self.root / _TEMPORARY
        temporary.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(temporary, self.root / MANIFEST)  # a reader never sees half a manifest


def claim(root: str | Path, writer: str) -> OwnedFolder:
    """The folder as `writer` left it (or a new, empty one); BuildRefused, changing nothing, when
    it is not a folder, holds files without a manifest, or belongs to another command."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise BuildRefused(f"{root}: the output path exists and is not a folder")
    manifest = root / MANIFEST
    if not manifest.is_file():
        # A leftover temporary manifest alone is a build killed at its very first save.
        others = sorted(p.name for p in root.iterdir() if p.name != _TEMPORARY) if root.is_dir() else []
        if others:
            raise BuildRefused(
                f"{root}: the output folder holds files {writer} did not write ({len(others)} entries, e.g. "
                f"{others[0]!r}, and no {MANIFEST}); nothing was changed: choose an empty or new folder"
            )
        return OwnedFolder(root, writer)
    try:
        record = json.loads(manifest.read_text())
        files = {_relative(path): size for path, size in record["files"].items()}
        if not all(size is None or (isinstance(size, int) and size >= 0) for size in files.values()):
            raise ValueError("a file size is not a count of bytes")
        owner, settings, complete = record["writer"], record["settings"], record["complete"] is True
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BuildRefused(f"{manifest}: not a manifest this command can use ({error}); nothing was changed") from None
    if owner != writer:
        raise BuildRefused(f"{root}: the output folder was written by {owner}, not by {writer}; nothing was changed")
    return OwnedFolder(root, writer, settings, complete, files)


def _relative(path: str | Path) -> str:
    """A path inside the folder, as the manifest spells it; anything that could leave it is refused."""
    posix = PurePosixPath(Path(path).as_posix())
    if posix.is_absolute() or ".." in posix.parts or not posix.parts or posix.parts == (MANIFEST,):
        raise ValueError(f"not a file path inside the folder: {str(path)!r}")
    return str(posix)
