"""Prompt manifests: a prompt + the reference images of its people, one row per sample to generate.

Manifests:
- `.jsonl`: one object per line, `{"prompt": "...", "references": ["refs/a.png", "refs/b.png"]}`;
  other fields are kept in `PromptRecord.extra` (e.g. the synthetic world's `identity_ids`, which
  an evaluation hook may read);
- `.csv`: the original Identity-GRPO release's layout, columns `ref_paths` (paths separated by
  `;`) and `prompt`; a `references` column is read the same way.
Relative paths are resolved against the manifest's folder. A bad row raises
`PromptManifestError` naming the file, the row (line of a .jsonl, data row of a .csv) and the field;
with `check_files` that includes a reference image that is missing or does not decode (a truncated
PNG would otherwise stop a run at its first sample). Held-out manifests are loaded with
`decode=False`: the evaluation skips and counts their undecodable references instead.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from identity_grpo.core.config_io import ConfigError
from identity_grpo.core.video import VideoReadError, read_image


class PromptManifestError(ConfigError):
    """A manifest that cannot be used; the message names the file, row and field. A user error
    like a bad config: the entry scripts print it as one line and exit with status 2."""


@dataclass
class PromptRecord:
    prompt: str
    references: list[Path]  # one image per person, in the order the prompt describes them
    extra: dict[str, Any] = field(default_factory=dict)  # the manifest's other fields
    where: str = ""  # "<manifest> row <n>", for messages about this prompt

    def load_references(self) -> list[np.ndarray]:
        """The reference images as uint8 [h, w, 3] RGB arrays; VideoReadError names a file that
        cannot be read."""
        return [load_image(path) for path in self.references]


def load_image(path: str | Path) -> np.ndarray:
    """uint8 [h, w, 3] RGB; decoded once and cached (a prompt comes back every few iterations)."""
    return _cached_image(str(path)).copy()


@lru_cache(maxsize=512)
def _cached_image(path: str) -> np.ndarray:
    return read_image(path)


def load_prompt_manifest(path: str | Path, check_files: bool = True, decode: bool = True) -> list[PromptRecord]:
    """All rows of a .jsonl or .csv prompt manifest, validated (see the module docstring).
    check_files: every reference exists and, with `decode`, decodes as an image."""
    path = Path(path)
    if not path.is_file():
        raise PromptManifestError(f"{path}: prompt manifest not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif suffix == ".csv":
        rows = _read_csv(path)
    else:
        raise PromptManifestError(f"{path}: unknown manifest type {suffix!r}; use .jsonl or .csv")
    records = [_record(path, number, row, check_files, decode) for number, row in rows]
    if not records:
        raise PromptManifestError(f"{path}: no prompts")
    return records


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptManifestError(f"{path.name} row {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise PromptManifestError(f"{path.name} row {number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def _read_csv(path: Path) -> list[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if "prompt" not in columns or not columns & {"ref_paths", "references"}:
            raise PromptManifestError(
                f"{path.name}: a prompt CSV needs the columns 'prompt' and 'ref_paths' (or 'references'), "
                f"got {sorted(columns)}"
            )
        rows = []
        for number, cells in enumerate(reader, 1):
            cells = dict(cells)
            paths = cells.pop("ref_paths", None)
            if paths is None:
                paths = cells.pop("references")
            row = {k: v for k, v in cells.items() if k is not None}
            row["references"] = [p.strip() for p in (paths or "").split(";") if p.strip()]
            rows.append((number, row))
        return rows


def _record(path: Path, number: int, row: dict, check_files: bool, decode: bool) -> PromptRecord:
    where = f"{path.name} row {number}"
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptManifestError(f"{where}, field 'prompt': expected a non-empty string, got {prompt!r}")
    references = row.get("references", [])
    if not isinstance(references, list):
        raise PromptManifestError(f"{where}, field 'references': expected a list of paths, got {references!r}")
    resolved = []
    for i, ref in enumerate(references):
        if not isinstance(ref, str) or not ref:
            raise PromptManifestError(f"{where}, field 'references[{i}]': expected a path, got {ref!r}")
        ref_path = Path(ref) if Path(ref).is_absolute() else path.parent / ref
        if check_files and not ref_path.is_file():
            raise PromptManifestError(f"{where}, field 'references[{i}]': file not found: {ref_path}")
        if check_files and decode:
            try:
                _cached_image(str(ref_path))  # cached: a reference many rows share is decoded once
            except VideoReadError as error:
                raise PromptManifestError(f"{where}, field 'references[{i}]': {error}") from None
        resolved.append(ref_path)
    extra = {k: v for k, v in row.items() if k not in ("prompt", "references")}
    return PromptRecord(prompt=prompt, references=resolved, extra=extra, where=where)
