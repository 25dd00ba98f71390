"""Sample grids: several generated clips with their reference images, as one video people can
watch (mp4) or see inline in a page (GIF).

    frames = sample_grid([videos_a, videos_b], references, scale=4)   # uint8 [T, H', W', 3]
    save_grid(frames, "samples/step_00010", fps=4)                    # .mp4 and .gif

Rows are prompts; each row is the prompt's reference images stacked in one column, then one
column per set of clips (e.g. before / after training). Small clips are enlarged by pixel
repetition so the synthetic world's 48x64 people stay crisp.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from reward_model.video import resize_frames, write_gif, write_video

GAP = 2  # white pixels between cells (before enlarging)


def to_uint8(videos: torch.Tensor | np.ndarray) -> np.ndarray:
    """Clips [B, T, H, W, 3] float in [0, 1] (or uint8) -> uint8 numpy."""
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().float().cpu().numpy()
    videos = np.asarray(videos)
    if videos.dtype == np.uint8:
        return videos
    return (np.clip(videos, 0.0, 1.0) * 255).round().astype(np.uint8)


def reference_column(references: Sequence[np.ndarray], height: int) -> np.ndarray:
    """A prompt's reference images [h, w, 3] as square tiles in a block `height` rows high: one
    row of tiles for 1-2 people, two rows for 3-4 (so the tiles stay large)."""
    tile_rows = 1 if len(references) <= 2 else 2
    side = height // tile_rows
    per_row = -(-len(references) // tile_rows)
    tiles = [resize_frames(np.asarray(r)[None], side, side)[0] for r in references]
    canvas = np.full((height, per_row * side, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        top, left = (k // per_row) * side, (k % per_row) * side
        canvas[top : top + side, left : left + side] = tile
    return canvas


def sample_grid(columns: Sequence[torch.Tensor | np.ndarray], references: Sequence[Sequence[np.ndarray]],
                scale: int = 4) -> np.ndarray:
    """columns: sets of clips [B, T, H, W, 3] of the same B prompts; references: B lists of images.
    -> uint8 [T, rows * (H + gap), width, 3], enlarged `scale` times."""
    clips = [to_uint8(c) for c in columns]
    if not clips or any(c.shape != clips[0].shape for c in clips):
        raise ValueError(f"sample_grid: every column needs clips of one shape, got {[c.shape for c in clips]}")
    batch, num_frames, height, width, _ = clips[0].shape
    if len(references) != batch:
        raise ValueError(f"sample_grid: {batch} clips per column but {len(references)} reference lists")
    strips = [reference_column(refs, height) for refs in references]
    strip_width = max(strip.shape[1] for strip in strips)  # rows with fewer people get white space
    rows = []
    for b, strip in enumerate(strips):
        strip = np.pad(strip, ((0, 0), (0, strip_width - strip.shape[1]), (0, 0)), constant_values=255)
        cells = [np.repeat(strip[None], num_frames, axis=0)] + [c[b] for c in clips]
        gap = np.full((num_frames, height, GAP, 3), 255, np.uint8)
        row = np.concatenate([part for cell in cells for part in (cell, gap)][:-1], axis=2)
        rows += [row, np.full((num_frames, GAP, row.shape[2], 3), 255, np.uint8)]
    grid = np.concatenate(rows[:-1], axis=1)
    return grid.repeat(scale, axis=1).repeat(scale, axis=2)


def save_grid(frames: np.ndarray, stem: str | Path, fps: float = 4.0) -> tuple[Path, Path]:
    """Write `stem`.mp4 and `stem`.gif; returns both paths."""
    stem = Path(stem)
    mp4, gif = stem.with_suffix(".mp4"), stem.with_suffix(".gif")
    write_video(mp4, frames, fps)
    write_gif(gif, frames, fps)
    return mp4, gif
