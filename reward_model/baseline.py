"""A non-learned yardstick: how much of each reference's colours the clip shows.

It needs no face detector and no training: per reference, a colour histogram of its
non-white pixels (the person on the white canvas), compared with each frame's histogram by
histogram intersection. A clip that loses a person's hair, skin or shirt colours scores
lower; a clip whose people swap places or faces does not, which is exactly the kind of
error a learned identity judge has to add.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

BINS_PER_CHANNEL = 6
WHITE_THRESHOLD = 245  # reference canvas pixels brighter than this on every channel are background


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    """pixels uint8 [N, 3] -> normalised histogram [BINS_PER_CHANNEL ** 3]."""
    q = (pixels.astype(np.int64) * BINS_PER_CHANNEL) // 256
    index = (q[:, 0] * BINS_PER_CHANNEL + q[:, 1]) * BINS_PER_CHANNEL + q[:, 2]
    hist = np.bincount(index, minlength=BINS_PER_CHANNEL**3).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def reference_histogram(image: np.ndarray) -> np.ndarray:
    pixels = image.reshape(-1, 3)
    person = pixels[~(pixels >= WHITE_THRESHOLD).all(axis=1)]
    return colour_histogram(person if len(person) else pixels)


def histogram_score(frames: np.ndarray, references: Sequence[np.ndarray]) -> float:
    """frames uint8 [T, H, W, 3], references uint8 [h, w, 3] each -> mean intersection in [0, 1]."""
    frame_hists = np.stack([colour_histogram(f.reshape(-1, 3)) for f in frames])  # [T, K]
    scores = [np.minimum(frame_hists, reference_histogram(r)[None]).sum(axis=1).mean() for r in references]
    return float(np.mean(scores)) if scores else 0.0


class HistogramBaselineScorer:
    """Same `score(videos, references, prompts)` interface as the learned RewardScorer."""

    def score(self, videos: Sequence[np.ndarray], references: Sequence[Sequence[np.ndarray]], prompts=None) -> np.ndarray:
        return np.array([histogram_score(v, r) for v, r in zip(videos, references)], dtype=np.float64)
