"""Randomly corrupted inputs through both stages' data paths (seeded, seconds), item by item:

- a bad manifest row (a missing field, a wrong type, a label that is not a/b/tie, a missing file;
  for prompts also a reference that does not decode) is rejected up front, the message naming the
  file, the row (its line, blank lines included) and the field;
- a clip or image that exists but cannot be read (truncated, zero bytes, random bytes) is skipped
  and counted by reason wherever it is read: training pairs (PairVideoDataset + PairCollator),
  evaluation pairs (score_rows), held-out prompts (readable_prompts);
- every good item is used.
"""
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from identity_grpo.core.prompt_manifest import PromptManifestError, load_prompt_manifest
from identity_grpo.core.video import VideoReadError, write_video
from identity_grpo.finetune.evaluation import readable_prompts
from reward_model.baseline import HistogramBaselineScorer
from reward_model.evaluation import score_rows
from reward_model.pair_dataset import LABEL_TO_INDEX, PairCollator, PairVideoDataset
from reward_model.pairs import FIELDS, PairManifestError, load_pairs

SEED = 11
CORRUPTIONS = ("truncated", "zero_bytes", "random_bytes")
WRONG_PAIR_VALUES = [
    ("pair_id", 7), ("pair_id", ""), ("prompt", 3), ("prompt", None), ("references", "ref0.png"),
    ("references", [1]), ("references", [""]), ("video_a", None), ("video_b", ["clip0.mp4"]), ("label", "A"),
    ("label", "same"), ("label", None), ("label", 1), ("source", "robot"), ("distortion", ""), ("severity", 1.5),
    ("severity", "high"), ("severity_other", -0.1), ("num_frames", 0), ("num_frames", 2.5), ("num_frames", True),
    ("fps", 0), ("fps", "8"),
]
WRONG_PROMPT_VALUES = [
    ("prompt", ""), ("prompt", 5), ("prompt", None), ("prompt", ["two people"]), ("references", "ref0.png"),
    ("references", {"a": 1}), ("references[0]", 3), ("references[0]", ""), ("references[1]", None),
]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """clip0-2.mp4 (3 frames) and ref0-2.png, readable; noise, so that half of a file never decodes."""
    root = tmp_path_factory.mktemp("good")
    rng = np.random.RandomState(SEED)
    for i in range(3):
        write_video(root / f"clip{i}.mp4", rng.randint(0, 256, (3, 16, 32, 3), dtype=np.uint8), fps=8)
        PIL.Image.fromarray(rng.randint(0, 256, (12, 10, 3), dtype=np.uint8)).save(root / f"ref{i}.png")
    return root


def corrupt(source: Path, target: Path, kind: str, rng: random.Random) -> str:
    """`source` cut to at most half (an mp4 keeps its index at the end, a PNG its pixels in the middle),
    an empty file, or random bytes, written to `target`."""
    data = source.read_bytes()
    if kind == "truncated":
        data = data[: rng.randint(0, len(data) // 2)]
    elif kind == "zero_bytes":
        data = b""
    else:
        data = rng.randbytes(rng.randint(1, 2 * len(data)))
    target.write_bytes(data)
    return str(target)


def write_manifest(path: Path, rows: list, bad_at: int, rng: random.Random) -> int:
    """rows as JSON lines (a str row as it is) with random blank lines; returns the line of rows[bad_at]."""
    lines, bad_line = [], 0
    for i, row in enumerate(rows):
        lines += [""] * rng.choice([0, 0, 1, 2])
        lines.append(row if isinstance(row, str) else json.dumps(row))
        if i == bad_at:
            bad_line = len(lines)
    path.write_text("\n".join(lines) + "\n")
    return bad_line


def pair_row(n: int, good: Path, rng: random.Random) -> dict:
    a, b = rng.sample(range(3), 2)
    return {"pair_id": f"p{n}", "prompt": rng.choice(["two people", "a person"]),
            "references": [str(good / "ref0.png"), str(good / f"ref{rng.randint(1, 2)}.png")],
            "video_a": str(good / f"clip{a}.mp4"), "video_b": str(good / f"clip{b}.mp4"),
            "label": rng.choice(["a", "b", "tie"]), "source": "synthetic", "distortion": None, "severity": None,
            "severity_other": None, "num_frames": 3, "fps": 8.0}


def break_pair_row(row: dict, rng: random.Random, earlier: list[dict], folder: Path) -> tuple[object, str | None]:
    """The row with one thing wrong, and the field the error must name (None: the row as a whole)."""
    kind = rng.choice(["missing_field", "wrong_value", "missing_file", "duplicate", "not_json", "not_object"])
    if kind == "missing_field":
        field = rng.choice(FIELDS)
        del row[field]
        return row, field
    if kind == "wrong_value":
        field, row[field] = rng.choice(WRONG_PAIR_VALUES)
        return row, field
    if kind == "missing_file":
        field = rng.choice(["video_a", "video_b", "references[0]", "references[1]"])
        missing = str(folder / f"missing-{rng.randrange(10**6)}.bin")
        if field.startswith("references"):
            row["references"][int(field[-2])] = missing
        else:
            row[field] = missing
        return row, field
    if kind == "duplicate" and earlier:
        row["pair_id"] = rng.choice(earlier)["pair_id"]
        return row, "pair_id"
    return ("{not json" if kind == "not_json" else "[1, 2]"), None


def test_bad_pair_rows_are_rejected_naming_file_row_and_field(good, tmp_path):
    rng = random.Random(SEED)
    for trial in range(150):
        rows = [pair_row(n, good, rng) for n in range(rng.randint(1, 5))]
        bad_at = rng.randrange(len(rows))
        rows[bad_at], field = break_pair_row(rows[bad_at], rng, rows[:bad_at], tmp_path)
        path = tmp_path / f"pairs{trial}.jsonl"
        line = write_manifest(path, rows, bad_at, rng)
        with pytest.raises(PairManifestError) as caught:
            load_pairs(path, check_files=True)
        where = f"{path.name} row {line}" + (f", field '{field}'" if field else "")
        assert str(caught.value).startswith(f"{where}: "), (rows[bad_at], str(caught.value))


def test_unreadable_pair_files_are_skipped_and_counted_by_reason(good, tmp_path):
    rng = random.Random(SEED + 1)
    rows, reasons = [], {}  # pair_id -> the reason it must be counted under
    for n in range(120):
        row = pair_row(n, good, rng)
        # Every batch of 4 holds a readable pair: a batch with none cannot train (the collator raises).
        if n % 4 and rng.random() < 0.6:
            slot, kind = rng.choice(["video_a", "video_b", "references[0]", "references[1]"]), rng.choice(CORRUPTIONS)
            if slot.startswith("references"):
                i = int(slot[-2])
                row["references"][i] = corrupt(Path(row["references"][i]), tmp_path / f"{n}.png", kind, rng)
                reasons[row["pair_id"]] = "unreadable_reference"
            else:
                row[slot] = corrupt(Path(row[slot]), tmp_path / f"{n}.mp4", kind, rng)
                reasons[row["pair_id"]] = "unreadable_video"
        rows.append(row)
    write_manifest(tmp_path / "pairs.jsonl", rows, 0, rng)
    loaded = [dict(r) for r in load_pairs(tmp_path / "pairs.jsonl", check_files=True)]  # every file exists
    readable = [r for r in loaded if r["pair_id"] not in reasons]
    assert len(loaded) == 120 and 30 < len(reasons) < 90

    dataset = PairVideoDataset(loaded, num_frames=2)
    collate = PairCollator(lambda clips, refs, prompts: (clips, refs, prompts))
    labels, skipped = [], 0
    for start in range(0, len(loaded), 4):
        batch = collate([dataset[i] for i in range(start, start + 4)])
        clips, refs, prompts = batch.inputs
        assert len(clips) == len(refs) == 2 * len(batch.labels) and all(c.shape == (2, 16, 32, 3) for c in clips)
        labels += batch.labels.tolist()
        skipped += batch.num_skipped
    assert skipped == len(reasons)
    assert labels == [LABEL_TO_INDEX[r["label"]] for r in readable]

    scores = score_rows(HistogramBaselineScorer().score, loaded, num_frames=2, batch_size=7, desc="fuzz")
    assert scores.skipped == dict(Counter(reasons.values()))
    assert [r["pair_id"] for r in scores.rows] == [r["pair_id"] for r in readable]
    assert np.isfinite(scores.margin).all()


def prompt_row(good: Path, rng: random.Random) -> dict:
    return {"prompt": rng.choice(["two people talk", "a person waves"]),
            "references": [str(good / f"ref{i}.png") for i in rng.sample(range(3), 2)]}


def break_prompt_row(row: dict, rng: random.Random, folder: Path, name: str) -> tuple[object, str | None]:
    kind = rng.choice(["wrong_value", "missing_field", "missing_file", "undecodable", "not_json", "not_object"])
    if kind == "wrong_value":
        field, value = rng.choice(WRONG_PROMPT_VALUES)
        if field.startswith("references["):
            row["references"][int(field[-2])] = value
        else:
            row[field] = value
        return row, field
    if kind == "missing_field":
        del row["prompt"]  # a row without references is a prompt without people, which is allowed
        return row, "prompt"
    if kind in ("missing_file", "undecodable"):
        i = rng.randrange(2)
        target = folder / f"{name}.png"
        if kind == "undecodable":
            corrupt(Path(row["references"][i]), target, rng.choice(CORRUPTIONS), rng)
        row["references"][i] = str(target)
        return row, f"references[{i}]"
    return ("{not json" if kind == "not_json" else "[1, 2]"), None


def test_bad_prompt_rows_are_rejected_naming_file_row_and_field(good, tmp_path):
    rng = random.Random(SEED + 2)
    for trial in range(150):
        rows = [prompt_row(good, rng) for _ in range(rng.randint(1, 5))]
        bad_at = rng.randrange(len(rows))
        rows[bad_at], field = break_prompt_row(rows[bad_at], rng, tmp_path, f"ref{trial}")
        path = tmp_path / f"prompts{trial}.jsonl"
        line = write_manifest(path, rows, bad_at, rng)
        with pytest.raises(PromptManifestError) as caught:
            load_prompt_manifest(path)
        where = f"{path.name} row {line}" + (f", field '{field}'" if field else "")
        assert str(caught.value).startswith(f"{where}: "), (rows[bad_at], str(caught.value))


def test_unreadable_held_out_references_are_skipped_and_counted(good, tmp_path):
    rng = random.Random(SEED + 3)
    rows, bad = [], set()
    for n in range(80):
        row = prompt_row(good, rng)
        if rng.random() < 0.5:
            i = rng.randrange(2)
            kind = rng.choice(CORRUPTIONS)
            row["references"][i] = corrupt(Path(row["references"][i]), tmp_path / f"{n}.png", kind, rng)
            bad.add(n)
        rows.append(row)
    write_manifest(tmp_path / "heldout.jsonl", rows, 0, rng)
    with pytest.raises(PromptManifestError, match=rf"^heldout\.jsonl row \d+, field 'references\[[01]\]': "):
        load_prompt_manifest(tmp_path / "heldout.jsonl")  # as a training manifest: refused up front
    records = load_prompt_manifest(tmp_path / "heldout.jsonl", decode=False)  # as the trainer loads held-out prompts
    usable, skipped = readable_prompts(records)
    assert usable == [n for n in range(80) if n not in bad] and skipped == {"unreadable_reference": len(bad)}
    for n, record in enumerate(records):
        if n in bad:
            with pytest.raises(VideoReadError, match=f"{n}.png"):
                record.load_references()
        else:
            assert [r.shape for r in record.load_references()] == [(12, 10, 3)] * 2
