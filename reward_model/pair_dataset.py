"""Pair data for training: manifests resolved (or synthetic pairs built), decoded, collated.

A pair whose files cannot be read is skipped and counted by the collator, so one corrupt
clip in a long run costs one sample, not the run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from reward_model.config import DataConfig
from reward_model.pairs import load_pairs
from identity_grpo.core.config_io import ConfigError
from identity_grpo.core.owned_folder import BuildRefused
from identity_grpo.core.video import VideoReadError, read_image, read_video

LABEL_TO_INDEX = {"a": 0, "b": 1, "tie": 2}
logger = logging.getLogger(__name__)


@dataclass
class PairSample:
    video_a: np.ndarray  # [T, H, W, 3] uint8
    video_b: np.ndarray  # [T, H, W, 3] uint8
    references: list[np.ndarray]  # P x [h, w, 3] uint8
    prompt: str
    label: int  # 0: a preferred, 1: b preferred, 2: tie


class PairVideoDataset(Dataset):
    def __init__(self, rows: list[dict], num_frames: int, max_pixels: int | None = None):
        self.rows = rows
        self.num_frames = num_frames
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> PairSample | None:
        row = self.rows[index]
        try:
            return PairSample(
                video_a=read_video(row["video_a"], num_frames=self.num_frames, max_pixels=self.max_pixels),
                video_b=read_video(row["video_b"], num_frames=self.num_frames, max_pixels=self.max_pixels),
                references=[read_image(p) for p in row["references"]],
                prompt=row["prompt"],
                label=LABEL_TO_INDEX[row["label"]],
            )
        except (VideoReadError, OSError, ValueError) as error:
            logger.warning("skipping pair %s (row %d): %s", row.get("pair_id"), index, error)
            return None


@dataclass
class PairBatch:
    inputs: object  # model inputs for 2B clips: the B "a" clips first, then the B "b" clips
    labels: torch.Tensor  # [B] long: 0 a, 1 b, 2 tie
    num_skipped: int  # pairs of this batch dropped because a file could not be read


class PairCollator:
    """Drops unreadable pairs (the batch says how many) and builds one model batch of 2B clips.

    The count travels with the batch because collation may run in DataLoader worker processes.
    """

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples: list[PairSample | None]) -> PairBatch:
        good = [s for s in samples if s is not None]
        if not good:
            raise RuntimeError("every pair of a batch was unreadable; see the warnings above")
        clips = [s.video_a for s in good] + [s.video_b for s in good]
        refs = [s.references for s in good] * 2
        prompts = [s.prompt for s in good] * 2
        inputs = self.processor(clips, refs, prompts)
        return PairBatch(inputs, torch.tensor([s.label for s in good], dtype=torch.long), len(samples) - len(good))


def load_splits(cfg: DataConfig, accelerator) -> dict[str, list[dict]]:
    """Manifest rows per split, validated up front; synthetic pairs are built when none are given;
    data.extra_train_manifests' rows join the training split.
    `cfg.label_column` picks the preference column of VideoAlign CSVs that have several."""
    paths = {"train": cfg.train_manifest, "val": cfg.val_manifest, "test": cfg.test_manifest}
    if not cfg.train_manifest:
        from reward_model.build_pairs import BuildSettings, build_synthetic_pairs, check_build

        s = cfg.synthetic
        shape = dict(seed=s.seed, num_frames=s.num_frames, height=s.height, width=s.width)
        try:  # on every process: a refusal stops them all, none is left waiting for the build
            check_build(s.out_dir, BuildSettings(s.num_train, s.num_val, s.num_test, **shape))
        except BuildRefused as error:
            raise ConfigError(f"data.synthetic: {error}") from None
        if accelerator.is_main_process:
            build_synthetic_pairs(s.out_dir, s.num_train, s.num_val, s.num_test, **shape)
        accelerator.wait_for_everyone()
        paths = {split: f"{s.out_dir}/{split}.jsonl" for split in paths}
    label_column = cfg.label_column or None
    splits = {
        split: [dict(row) for row in load_pairs(path, check_files=cfg.check_files, label_column=label_column)]
        for split, path in paths.items() if path
    }
    for path in cfg.extra_train_manifests:
        splits["train"] += [dict(row) for row in load_pairs(path, check_files=cfg.check_files, label_column=label_column)]
    return splits
