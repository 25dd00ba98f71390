"""Torch dataset over a pair manifest: decodes both clips and the references of each pair.

A pair whose files cannot be read is skipped and counted (`skipped`), so one corrupt clip in
a long run costs one sample, not the run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from reward_model.video import VideoReadError, read_image, read_video

LABEL_TO_INDEX = {"a": 0, "b": 1, "tie": 2}
logger = logging.getLogger(__name__)


@dataclass
class PairSample:
    video_a: np.ndarray  # [T, H, W, 3] uint8
    video_b: np.ndarray  # [T, H, W, 3] uint8
    references: list[np.ndarray]  # P x [h, w, 3] uint8
    prompt: str
    label: int  # 0: a preferred, 1: b preferred, 2: tie
    index: int  # row in the manifest


class PairVideoDataset(Dataset):
    def __init__(self, rows: list[dict], num_frames: int, max_pixels: int | None = None):
        self.rows = rows
        self.num_frames = num_frames
        self.max_pixels = max_pixels
        self.skipped = 0

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
                index=index,
            )
        except (VideoReadError, OSError, ValueError) as error:
            self.skipped += 1
            logger.warning("skipping pair %s (row %d): %s", row.get("pair_id"), index, error)
            return None
