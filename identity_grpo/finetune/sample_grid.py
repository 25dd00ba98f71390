"""The trainer's sample grids: the evaluation clips of a few held-out prompts beside their
reference images, drawn with the evaluation report's grid (identity_grpo/core/video_grid.py).

    frames = sample_grid({"before": videos_a, "after": videos_b}, references)   # uint8 [T, H', W', 3]
    save_grid(frames, "samples/before_after", fps=4)                            # .mp4, .gif, .png
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from identity_grpo.core.video_grid import GridRow, build_grid, write_grid


def to_uint8(videos: torch.Tensor | np.ndarray) -> np.ndarray:
    """Clips [B, T, H, W, 3] float in [0, 1] (or uint8) -> uint8 numpy."""
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().float().cpu().numpy()
    videos = np.asarray(videos)
    if videos.dtype == np.uint8:
        return videos
    return (np.clip(videos, 0.0, 1.0) * 255).round().astype(np.uint8)


def sample_grid(columns: Mapping[str, torch.Tensor | np.ndarray], references: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """columns: {label: clips [B, T, H, W, 3]} of the same B prompts; references: B lists of images.
    -> uint8 frames: one row per prompt, its references then one labelled column per set of clips."""
    clips = {name: to_uint8(c) for name, c in columns.items()}
    batch = len(references)
    if not clips or any(len(c) != batch for c in clips.values()):
        raise ValueError(f"sample_grid: every column needs {batch} clips (one per reference list), "
                         f"got {[len(c) for c in clips.values()]}")
    rows = [GridRow(list(references[b]), [c[b] for c in clips.values()], [""] * len(clips), f"#{b + 1}")
            for b in range(batch)]
    frames, _ = build_grid(rows, ["references", *clips])
    return frames


def save_grid(frames: np.ndarray, stem: str | Path, fps: float = 4.0) -> list[Path]:
    """Write stem.mp4, stem.gif and stem.png (the middle frame); returns the paths."""
    return write_grid(frames, Path(stem), fps)
