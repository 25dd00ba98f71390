"""Named random streams. Every random draw of a run comes from one of these, seeded from the run's
seed and the draw's coordinates (step, process, prompt...), so any draw can be reproduced on its
own: after a resume, on another process count, or in the report, which samples held-out prompts
from exactly the noise the trainer's evaluation used.

    rng = stream_rng(cfg.train.seed, Stream.EVAL_NOISE, prompt_index)
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    # The values are part of every saved run's reproducibility: never renumber one.
    PROMPT_ORDER = 0  # the shuffle of the prompt manifest, per pass over it (coordinate: epoch)
    GROUP_ORDER = 1  # the order of a step's samples before they are split over processes (step)
    EVAL_NOISE = 3  # initial noise of one held-out prompt, trainer evaluation and report alike (prompt index)
    EVAL_SDE = 4  # the per-step noise of a stochastic evaluation sampler (first prompt index of the batch)
    SDE_WINDOW = 5  # where the trained SDE window starts (step; the same on every process)
    SAMPLING = 6  # initial and per-step noise of training samples (step, process)
    UPDATE = 7  # the update phase's shuffles of samples and timesteps (step, process)
    PAIR_ORDER = 8  # stage 1: the order of the training pairs in one epoch (epoch)
    DECODER_FRAMES = 9  # IPRO: the frames a sample decodes with gradients (step, process, micro-batch, sample)
    GROUP_NOISE = 10  # GRPO with train.shared_group_noise: the initial noise of one group (group id)
    GENERATED_PAIRS = 11  # grpo/generated_pairs.py: the noise both clips of a batch of pairs share (batch index)
    ANNOTATED_PAIRS = 12  # grpo/annotated_pairs.py: the noise of one batch of prompts' clips (batch index)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (numpy's SeedSequence hashing: no accidental overlaps)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def stream_seed(seed: int, stream: Stream, *coordinates: int) -> int:
    return mix_seed(seed, *coordinates, int(stream))


def stream_rng(seed: int, stream: Stream, *coordinates: int) -> torch.Generator:
    """A CPU torch generator for one draw of `stream` (CPU, so a seed gives the same numbers anywhere)."""
    return torch.Generator().manual_seed(stream_seed(seed, stream, *coordinates))
