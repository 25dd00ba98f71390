"""Stage 2 on the synthetic world: its prompt manifests on disk, and the independent identity
measure as an evaluation hook.

    train, heldout = write_world_manifests("data/synthetic/grpo", num_train=256, num_heldout=32)
    metrics = train_grpo(cfg, evaluate_fn=world_identity_metrics)

Manifest rows are ordinary prompt manifests (`prompt`, `references`) plus `identity_ids`, the world
ids of the people left to right, which is all the measure needs to know who should appear.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.world.prompt_set import synthetic_prompt_set
from identity_grpo.world.identities import identity_from_id
from identity_grpo.world.measure import identity_consistency
from identity_grpo.core.video import write_image

MANIFEST_FORMAT = 1  # bump when rows change meaning: an older folder is rewritten


def write_world_manifests(out_dir: str | Path, num_train: int, num_heldout: int, seed: int = 0,
                          num_people: Sequence[int] = (2, 3), reference_size: int = 32) -> tuple[Path, Path]:
    """(train.jsonl, heldout.jsonl) under out_dir with one PNG per identity in refs/. Training
    prompts show training identities, held-out prompts only held-out ones. Rewritten only when the
    settings differ from the folder's (so concurrent runs of one config share the files)."""
    out_dir = Path(out_dir)
    settings = {"format": MANIFEST_FORMAT, "num_train": num_train, "num_heldout": num_heldout, "seed": seed,
                "num_people": list(num_people), "reference_size": reference_size}
    paths = out_dir / "train.jsonl", out_dir / "heldout.jsonl"
    marker = out_dir / "settings.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings and all(p.is_file() for p in paths):
        return paths
    (out_dir / "refs").mkdir(parents=True, exist_ok=True)
    for path, split, count in zip(paths, ("train", "heldout"), (num_train, num_heldout)):
        rows = []
        for sample in synthetic_prompt_set(count, split, seed, num_people, reference_size):
            ids = [person.id for person in sample.identities]
            refs = []
            for identity_id, image in zip(ids, sample.references):
                ref = Path("refs") / f"{identity_id:05d}.png"
                if not (out_dir / ref).is_file():
                    write_image(out_dir / ref, image)
                refs.append(ref.as_posix())
            rows.append({"prompt": sample.prompt, "references": refs, "identity_ids": ids})
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        tmp.replace(path)
    marker.write_text(json.dumps(settings))
    return paths


def world_identities(record: PromptRecord) -> list:
    """The world identities a record asks for, left to right (from its `identity_ids` field)."""
    ids = record.extra.get("identity_ids")
    if not isinstance(ids, list) or len(ids) != len(record.references):
        raise ValueError(f"synthetic world: prompt {record.prompt[:40]!r}... needs 'identity_ids' with one id per "
                         f"reference ({len(record.references)}), got {ids!r}")
    return [identity_from_id(int(i)) for i in ids]


def world_identity_scores(videos: torch.Tensor, records: Sequence[PromptRecord]) -> dict[str, torch.Tensor]:
    """The world's independent identity measure of generated clips videos [B, T, H, W, 3] in [0, 1]:
    {"identity": mean over people [B], "identity_worst": worst person [B]}."""
    frames = (videos.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    scores = [identity_consistency(clip, world_identities(record)) for clip, record in zip(frames, records)]
    return {"identity": torch.tensor([s.mean for s in scores]),
            "identity_worst": torch.tensor([s.worst for s in scores])}


def world_identity_metrics(batch) -> dict[str, torch.Tensor]:
    """train_grpo's evaluate_fn hook (an EvalBatch in, per-sample metrics out)."""
    return world_identity_scores(batch.videos, batch.records)


def per_person_scores(videos: torch.Tensor, records: Sequence[PromptRecord]) -> list[np.ndarray]:
    """Per clip, the measure of each person [P] (for per-person histograms)."""
    frames = (videos.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [identity_consistency(clip, world_identities(record)).per_person for clip, record in zip(frames, records)]
