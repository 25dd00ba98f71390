"""The pair manifest: one row per preference pair, validated up front, loaded as a `datasets.Dataset`.

Accepted files: JSON lines (the native format), a JSON list of rows, CSV, Parquet, and
VideoAlign-style CSVs (columns path_A, path_B, prompt and an A/B/same label column) as they
are. Every row is checked before training starts; the first bad value raises
`PairManifestError` naming the file, the row (1-based: the line of a .jsonl, the data row of a
.csv / .json / .parquet) and the field. Relative paths are resolved against the manifest's
folder. data/README.md documents the fields.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Iterable

import datasets

from identity_grpo.core.config_io import ConfigError

LABELS = ("a", "b", "tie")
SOURCES = ("human", "synthetic")
# Field -> datasets type; all required in native manifests (distortion/severity fields may be null).
FEATURES = datasets.Features({
    "pair_id": datasets.Value("string"),
    "prompt": datasets.Value("string"),
    "references": datasets.List(datasets.Value("string")),
    "video_a": datasets.Value("string"),
    "video_b": datasets.Value("string"),
    "label": datasets.Value("string"),
    "source": datasets.Value("string"),
    "distortion": datasets.Value("string"),
    "severity": datasets.Value("float64"),
    "severity_other": datasets.Value("float64"),
    "num_frames": datasets.Value("int64"),
    "fps": datasets.Value("float64"),
})  # fmt: skip
FIELDS = tuple(FEATURES)
# VideoAlign's training CSV: path_A, path_B, prompt, one preference column per dimension
# (VQ visual quality, MQ motion quality, TA text alignment) with values A / B / same, and
# optional fps_A, num_frames_A, fps_B, num_frames_B.
VIDEOALIGN_LABELS = {"a": "a", "b": "b", "same": "tie"}
VIDEOALIGN_DIMENSIONS = ("VQ", "MQ", "TA")


class PairManifestError(ConfigError):
    """A manifest that cannot be used; the message names the file, row and field. A user error
    like a bad config: the entry scripts print it as one line and exit with status 2."""


def _fail(name: str, row: int, field: str | None, message: str) -> PairManifestError:
    where = f"{name} row {row}" + (f", field '{field}'" if field else "")
    return PairManifestError(f"{where}: {message}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_row(row: dict, name: str, number: int) -> None:
    """Raise PairManifestError for the first field of a native-format row that is missing or wrong."""
    for field in FIELDS:
        if field not in row:
            raise _fail(name, number, field, "missing")
    for field in ("pair_id", "video_a", "video_b"):
        if not isinstance(row[field], str) or not row[field]:
            raise _fail(name, number, field, f"expected a non-empty string, got {row[field]!r}")
    if not isinstance(row["prompt"], str):
        raise _fail(name, number, "prompt", f"expected a string, got {row['prompt']!r}")
    refs = row["references"]
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        raise _fail(name, number, "references", f"expected a list of image paths, got {refs!r}")
    if row["label"] not in LABELS:
        raise _fail(name, number, "label", f"expected 'a', 'b' or 'tie', got {row['label']!r}")
    if row["source"] not in SOURCES:
        raise _fail(name, number, "source", f"expected 'human' or 'synthetic', got {row['source']!r}")
    if row["distortion"] is not None and (not isinstance(row["distortion"], str) or not row["distortion"]):
        raise _fail(name, number, "distortion", f"expected a non-empty string or null, got {row['distortion']!r}")
    for field in ("severity", "severity_other"):
        value = row[field]
        if value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
            raise _fail(name, number, field, f"expected a number in [0, 1] or null, got {value!r}")
    frames, fps = row["num_frames"], row["fps"]
    if frames is not None and not (isinstance(frames, int) and not isinstance(frames, bool) and frames >= 1):
        raise _fail(name, number, "num_frames", f"expected an integer >= 1, got {frames!r}")
    if fps is not None and not (_is_number(fps) and fps > 0):
        raise _fail(name, number, "fps", f"expected a number > 0, got {fps!r}")


def _read_jsonl(path: Path) -> Iterable[tuple[int, object]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise _fail(path.name, number, None, f"invalid JSON ({error.msg})") from error


def _read_json(path: Path) -> Iterable[tuple[int, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PairManifestError(f"{path.name}: invalid JSON at line {error.lineno} ({error.msg})") from error
    if not isinstance(data, list):
        raise PairManifestError(f"{path.name}: expected a JSON list of pair objects, got {type(data).__name__}")
    return enumerate(data, start=1)


def _read_parquet(path: Path) -> Iterable[tuple[int, object]]:
    import pyarrow.parquet as pq

    return enumerate(pq.read_table(path).to_pylist(), start=1)


def _csv_paths(value: str) -> list[str]:
    """A CSV cell holding image paths: a JSON list, or paths separated by ';' (empty: none)."""
    value = (value or "").strip()
    if value.startswith("["):
        return json.loads(value)
    return [part.strip() for part in value.split(";") if part.strip()]


def _csv_number(value: str, cast, name: str, number: int, field: str):
    if value is None or value.strip() == "":
        return None
    try:
        return cast(value)
    except ValueError as error:
        raise _fail(name, number, field, f"expected a number, got {value!r}") from error


def _csv_int(value: str) -> int:
    as_float = float(value)
    if not as_float.is_integer():
        raise ValueError(value)
    return int(as_float)


def _native_csv_row(cells: dict, name: str, number: int) -> dict:
    row = dict(cells)
    for field in FIELDS:
        if field not in cells:
            raise _fail(name, number, field, "missing (no such column)")
    try:
        row["references"] = _csv_paths(cells["references"])
    except json.JSONDecodeError as error:
        raise _fail(name, number, "references", f"invalid JSON list ({error.msg})") from error
    row["distortion"] = cells["distortion"] or None
    for field in ("severity", "severity_other", "fps"):
        row[field] = _csv_number(cells[field], float, name, number, field)
    row["num_frames"] = _csv_number(cells["num_frames"], _csv_int, name, number, "num_frames")
    return row


def _label_column(columns: list[str], name: str, label_column: str | None) -> str:
    if label_column is not None:
        if label_column not in columns:
            raise PairManifestError(f"{name}: no label column {label_column!r}; columns are {columns}")
        return label_column
    if "label" in columns:
        return "label"
    found = [c for c in VIDEOALIGN_DIMENSIONS if c in columns]
    if len(found) == 1:
        return found[0]
    if not found:
        raise PairManifestError(f"{name}: no label column: expected 'label' or one of {list(VIDEOALIGN_DIMENSIONS)}")
    raise PairManifestError(
        f"{name}: several preference columns {found}; add a 'label' column or pass label_column= to choose one"
    )


def _videoalign_row(cells: dict, name: str, number: int, label_column: str, stem: str) -> dict:
    for column in ("path_A", "path_B"):
        if not (cells.get(column) or "").strip():
            raise _fail(name, number, column, "expected a video path, got an empty cell")
    raw_label = (cells[label_column] or "").strip()
    if raw_label.lower() not in VIDEOALIGN_LABELS:
        raise _fail(name, number, label_column, f"expected 'A', 'B' or 'same', got {raw_label!r}")
    frames = [_csv_number(cells.get(f"num_frames_{side}"), _csv_int, name, number, f"num_frames_{side}")
              for side in "AB"]
    known_frames = [f for f in frames if f is not None]
    try:
        references = _csv_paths(cells.get("references", ""))
    except json.JSONDecodeError as error:
        raise _fail(name, number, "references", f"invalid JSON list ({error.msg})") from error
    return {
        "pair_id": cells.get("pair_id") or f"{stem}-{number}",
        "prompt": cells.get("prompt") or "",
        "references": references,
        "video_a": cells["path_A"],
        "video_b": cells["path_B"],
        "label": VIDEOALIGN_LABELS[raw_label.lower()],
        "source": cells.get("source") or "human",
        "distortion": None,
        "severity": None,
        "severity_other": None,
        # One clip length per pair: the shorter clip bounds what a sampler can take from both.
        "num_frames": min(known_frames) if known_frames else None,
        "fps": _csv_number(cells.get("fps_A"), float, name, number, "fps_A"),
    }


def _read_csv(path: Path, label_column: str | None) -> list[tuple[int, dict]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if "path_A" in columns and "path_B" in columns:
            label = _label_column(columns, path.name, label_column)
            return [(n, _videoalign_row(cells, path.name, n, label, path.stem)) for n, cells in enumerate(reader, 1)]
        return [(n, _native_csv_row(cells, path.name, n)) for n, cells in enumerate(reader, 1)]


def _resolve(path: str, folder: Path) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(folder, path))


def read_rows(path: str | Path, check_files: bool = False, label_column: str | None = None) -> list[dict]:
    """Validated manifest rows as dicts with resolved paths (what `load_pairs` wraps)."""
    path = Path(path)
    if not path.is_file():
        raise PairManifestError(f"{path}: manifest file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        numbered = _read_jsonl(path)
    elif suffix == ".json":
        numbered = _read_json(path)
    elif suffix == ".csv":
        numbered = _read_csv(path, label_column)
    elif suffix == ".parquet":
        numbered = _read_parquet(path)
    else:
        raise PairManifestError(f"{path}: unknown manifest type {suffix!r}; use .jsonl, .json, .csv or .parquet")
    rows, first_row_of = [], {}
    for number, row in numbered:
        if not isinstance(row, dict):
            raise _fail(path.name, number, None, f"expected an object with the pair's fields, got {type(row).__name__}")
        validate_row(row, path.name, number)
        if row["pair_id"] in first_row_of:
            raise _fail(path.name, number, "pair_id", f"duplicate of row {first_row_of[row['pair_id']]}")
        first_row_of[row["pair_id"]] = number
        row = dict(row, references=[_resolve(r, path.parent) for r in row["references"]],
                   video_a=_resolve(row["video_a"], path.parent), video_b=_resolve(row["video_b"], path.parent))
        if check_files:
            for field, file in [("video_a", row["video_a"]), ("video_b", row["video_b"])] + [
                (f"references[{i}]", r) for i, r in enumerate(row["references"])
            ]:
                if not os.path.isfile(file):
                    raise _fail(path.name, number, field, f"file not found: {file}")
        rows.append(row)
    if not rows:
        raise PairManifestError(f"{path}: the manifest has no rows")
    return rows


def load_pairs(path: str | Path, check_files: bool = False, label_column: str | None = None) -> datasets.Dataset:
    """A validated manifest as an in-memory `datasets.Dataset` (FEATURES plus any extra columns).

    check_files: also stat every video and reference. label_column: which A/B/same column of a
    VideoAlign CSV to use when it has several (default: 'label', else its only VQ/MQ/TA column).
    """
    rows = read_rows(path, check_files=check_files, label_column=label_column)
    extras = sorted({key for row in rows for key in row} - set(FIELDS))
    features = datasets.Features(FEATURES)
    if extras:  # extra columns keep whatever types they have
        inferred = datasets.Dataset.from_list([{k: row.get(k) for k in extras} for row in rows]).features
        features.update(inferred)
    return datasets.Dataset.from_list([{k: row.get(k) for k in features} for row in rows], features=features)


def write_pairs(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows (validated first) as a JSON-lines manifest; paths are written as given."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"{path}: write_pairs writes JSON lines; name the file *.jsonl")
    rows = list(rows)
    for number, row in enumerate(rows, start=1):
        validate_row(row, path.name, number)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".jsonl.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(temporary, path)  # a reader never sees half a manifest
    return path
