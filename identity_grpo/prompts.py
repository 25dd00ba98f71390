"""Prompt manifests (a prompt + the reference images of its people) and the group sampler.

Manifests:
- `.jsonl`: one object per line, `{"prompt": "...", "references": ["refs/a.png", "refs/b.png"]}`;
  other fields are kept in `PromptRecord.extra` (e.g. the synthetic world's `identity_ids`, which
  an evaluation hook may read);
- `.csv`: the original Identity-GRPO release's layout, columns `ref_paths` (paths separated by
  `;`) and `prompt`; a `references` column is read the same way.
Relative paths are resolved against the manifest's folder. A bad row raises
`PromptManifestError` naming the file, the row (line of a .jsonl, data row of a .csv) and the field.

The sampler follows Flow-GRPO's distributed repeat sampler: each iteration takes the next
`prompts_per_step` prompts of a seeded endless shuffle, repeats each `group_size` times, shuffles
those samples (the same permutation on every process) and cuts them into one contiguous share per
process, so a group may span processes (advantages then gather rewards first).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch


class PromptManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, row and field."""


@dataclass
class PromptRecord:
    prompt: str
    references: list[Path]  # one image per person, in the order the prompt describes them
    extra: dict[str, Any] = field(default_factory=dict)  # the manifest's other fields

    def load_references(self) -> list[np.ndarray]:
        """The reference images as uint8 [h, w, 3] RGB arrays."""
        return [load_image(path) for path in self.references]


def load_image(path: str | Path) -> np.ndarray:
    """uint8 [h, w, 3] RGB; decoded once and cached (a prompt comes back every few iterations)."""
    return _cached_image(str(path)).copy()


@lru_cache(maxsize=512)
def _cached_image(path: str) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_prompt_manifest(path: str | Path, check_files: bool = True) -> list[PromptRecord]:
    """All rows of a .jsonl or .csv prompt manifest, validated (see the module docstring)."""
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
    records = [_record(path, number, row, check_files) for number, row in rows]
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


def _record(path: Path, number: int, row: dict, check_files: bool) -> PromptRecord:
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
        resolved.append(ref_path)
    extra = {k: v for k, v in row.items() if k not in ("prompt", "references")}
    return PromptRecord(prompt=prompt, references=resolved, extra=extra)


@dataclass(frozen=True)
class SampleSlot:
    """One sample to generate: which prompt, and which group it belongs to."""

    prompt_index: int  # row of the manifest
    group_id: int  # the same on every process for the group's members; unique over the run


class GroupSampler:
    """Which samples each process generates at each iteration (pure function of the step)."""

    def __init__(self, num_prompts: int, group_size: int, prompts_per_step: int,
                 num_processes: int = 1, process_index: int = 0, seed: int = 0):
        total = prompts_per_step * group_size
        if num_prompts < 1 or group_size < 1 or prompts_per_step < 1:
            raise ValueError("prompts.GroupSampler: num_prompts, group_size and prompts_per_step must be >= 1")
        if total % num_processes:
            raise ValueError(
                f"prompts.GroupSampler: prompts_per_step * group_size = {total} does not split over {num_processes} processes"
            )
        if not 0 <= process_index < num_processes:
            raise ValueError(f"prompts.GroupSampler: process_index {process_index} not in [0, {num_processes})")
        self.num_prompts, self.group_size, self.prompts_per_step = num_prompts, group_size, prompts_per_step
        self.num_processes, self.process_index, self.seed = num_processes, process_index, seed
        self.per_process = total // num_processes

    def prompt_indices(self, step: int) -> list[int]:
        """The step's prompts: positions [step * P, (step + 1) * P) of an endless sequence of seeded
        permutations of the manifest, so every prompt is used once before any is used twice."""
        start = step * self.prompts_per_step
        indices = []
        for position in range(start, start + self.prompts_per_step):
            epoch, offset = divmod(position, self.num_prompts)
            indices.append(int(self._permutation(epoch)[offset]))
        return indices

    def _permutation(self, epoch: int) -> torch.Tensor:
        rng = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 0))
        return torch.randperm(self.num_prompts, generator=rng)

    def all_slots(self, step: int) -> list[SampleSlot]:
        """Every process's samples of the step, process 0's share first."""
        prompts = self.prompt_indices(step)
        repeated = [
            SampleSlot(index, step * self.prompts_per_step + k) for k, index in enumerate(prompts) for _ in range(self.group_size)
        ]
        order = torch.randperm(len(repeated), generator=torch.Generator().manual_seed(mix_seed(self.seed, step, 1)))
        return [repeated[i] for i in order.tolist()]

    def slots(self, step: int) -> list[SampleSlot]:
        """This process's share of the step's samples."""
        start = self.process_index * self.per_process
        return self.all_slots(step)[start : start + self.per_process]


def sampling_batches(slots: list[SampleSlot], reference_counts: list[int], batch_size: int) -> list[list[SampleSlot]]:
    """Slots cut into batches of at most batch_size whose prompts all have the same number of
    references (the generators encode one reference count per batch): bucketed by count, in
    increasing count, each bucket in its given order."""
    if batch_size < 1:
        raise ValueError(f"prompts.sampling_batches: batch_size must be >= 1, got {batch_size}")
    buckets: dict[int, list[SampleSlot]] = {}
    for slot in slots:
        buckets.setdefault(reference_counts[slot.prompt_index], []).append(slot)
    return [
        bucket[start : start + batch_size]
        for _, bucket in sorted(buckets.items())
        for start in range(0, len(bucket), batch_size)
    ]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (numpy's SeedSequence hashing: no accidental overlaps)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)
