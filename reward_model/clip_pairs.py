"""Distorted copies of one tracked clip, paired for preference training (the real-video recipe).

The clip's people are given by their face boxes [T, P, 4]; the stage-1 operators in
identity_grpo.world.distortions corrupt the clip inside those boxes. Pair types and severities follow
the synthetic builder (reward_model.build_pairs): clean vs distorted, and mild vs severe copies
of one operator hitting the same people. Ties are left out: the synthetic builder makes them
from two renderings of the same people, which one real clip does not give.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reward_model.build_pairs import KINDS, MILD, MILD_SEVERE_SHARE, SEVERE_GAP, SEVERITY
from identity_grpo.world.distortions import apply_distortion

# Every other operator moves a face between two people, so a one-person clip gets only these.
ONE_PERSON_KINDS = ("degrade",)


@dataclass
class ClipPair:
    """Two versions of one clip; `better` keeps the identities better."""

    better: np.ndarray | None  # [T, H, W, 3] uint8, or None: the clean clip itself
    worse: np.ndarray  # [T, H, W, 3] uint8 distorted copy
    kind: str  # distortion kind (a key of identity_grpo.world.distortions.DISTORTIONS)
    severity: float  # of `worse`
    severity_other: float  # of `better` (0.0: clean)


def distortion_kinds(num_people: int) -> tuple[str, ...]:
    return KINDS if num_people >= 2 else ONE_PERSON_KINDS


def make_clip_pairs(frames: np.ndarray, boxes: np.ndarray, count: int, rng: np.random.Generator) -> list[ClipPair]:
    """frames uint8 [T, H, W, 3], boxes [T, P, 4] -> `count` pairs, kinds in turn from a random start."""
    kinds = distortion_kinds(boxes.shape[1])
    start = int(rng.integers(len(kinds)))
    pairs = []
    for index in range(count):
        kind = kinds[(start + index) % len(kinds)]
        if rng.uniform() < MILD_SEVERE_SHARE:
            mild = float(rng.uniform(*MILD))
            severe = float(rng.uniform(mild + SEVERE_GAP, 1.0))
            choice_seed = int(rng.integers(2**32))  # one seed: both copies hit the same people
            better = apply_distortion(kind, frames, boxes, mild, np.random.default_rng(choice_seed))
            worse = apply_distortion(kind, frames, boxes, severe, np.random.default_rng(choice_seed))
            pairs.append(ClipPair(better, worse, kind, severe, mild))
        else:
            severity = float(rng.uniform(*SEVERITY))
            pairs.append(ClipPair(None, apply_distortion(kind, frames, boxes, severity, rng), kind, severity, 0.0))
    return pairs
