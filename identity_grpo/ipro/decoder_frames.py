"""Which frames of a training clip IPRO decodes with gradients (train.decoder_grad_frames = k).

The decoder runs one latent chunk at a time (latent frame 0 -> pixel frame 0, each later one -> t = 4
frames; generators/causal_decode.py), and its memory grows with the chunks decoded with gradients,
so whole chunks are drawn: m = ceil(k / t) per sample, independently, each with probability
proportional to the frames it holds (1 / F for chunk 0, t / F for the others; F = 1 + t (L - 1)).
The face reward then scores t frames per drawn chunk, chunk 0's one frame counted t times, so it is
the average of the drawn chunks' per-frame means. Each of those is an unbiased estimate of the
clip's per-frame mean:

    E[mean of chunk c] = sum_c (n_c / F) (1 / n_c) sum_{f in c} r_f = (1 / F) sum_f r_f,

so their average is too (tests/ipro/test_decoder_frames.py enumerates it exactly). A chunk drawn twice
is decoded once and scored twice.
"""
from __future__ import annotations

import math

import torch

from identity_grpo.core.seeds import Stream, stream_rng


def chunk_count(grad_frames: int, temporal: int) -> int:
    """m: latent chunks drawn per sample for train.decoder_grad_frames (whole chunks of `temporal` frames)."""
    return math.ceil(grad_frames / temporal)


def chunk_probabilities(latent_frames: int, temporal: int) -> torch.Tensor:
    """float64 [L]: chunk c's share of the clip's frames."""
    sizes = torch.tensor([1.0] + [float(temporal)] * (latent_frames - 1), dtype=torch.float64)
    return sizes / sizes.sum()


def chunk_frames(chunk: int, temporal: int) -> list[int]:
    """The t pixel frames a drawn chunk puts in front of the reward (chunk 0: its one frame t times)."""
    return [0] * temporal if chunk == 0 else list(range(temporal * (chunk - 1) + 1, temporal * chunk + 1))


def draw_chunks(latent_frames: int, temporal: int, count: int, rng: torch.Generator) -> torch.Tensor:
    """count chunks, independently, with chunk_probabilities: int64 [count], ascending."""
    if count < 1:
        raise ValueError(f"ipro.draw_chunks: count must be >= 1, got {count}")
    drawn = torch.multinomial(chunk_probabilities(latent_frames, temporal), count, replacement=True, generator=rng)
    return drawn.sort().values


def graded_frames(seed: int, step: int, process: int, micro_batch: int, batch: int, num_frames: int,
                  grad_frames: int, temporal: int = 4) -> torch.Tensor:
    """[batch, t m] pixel frame indices the reward scores: each sample's draw from its own coordinates of
    Stream.DECODER_FRAMES."""
    latent = (num_frames - 1) // temporal + 1
    rows = []
    for b in range(batch):
        rng = stream_rng(seed, Stream.DECODER_FRAMES, step, process, micro_batch, b)
        chunks = draw_chunks(latent, temporal, chunk_count(grad_frames, temporal), rng)
        rows.append([f for c in chunks.tolist() for f in chunk_frames(c, temporal)])
    return torch.tensor(rows, dtype=torch.int64)
