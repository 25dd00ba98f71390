"""Stage-2 prompts on the synthetic world: who should appear (identities, left to right), the
prompt that describes them and one reference image per person. Training prompts show training
identities; the held-out split shows only identities the reward model and the toy generators
never saw, for evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from identity_grpo.world.clips import make_prompt
from identity_grpo.world.identities import Identity, sample_identities
from identity_grpo.world.render import render_reference

SPLIT_CODES = {"train": 0, "heldout": 1}  # mixed into the seed: the two splits never share a stream


@dataclass
class PromptSample:
    prompt: str
    references: list[np.ndarray]  # P images, uint8 [reference_size, reference_size, 3], left to right
    identities: list[Identity]  # P people, left to right


def synthetic_prompt_set(num: int, split: str = "train", seed: int = 0, num_people: Sequence[int] = (2, 3),
                         reference_size: int = 32) -> list[PromptSample]:
    """`num` samples, each with a number of people drawn uniformly from `num_people`; the same
    arguments always give the same samples. People of one sample differ in hair and shirt colour."""
    if split not in SPLIT_CODES:
        raise ValueError(f"prompt_set.synthetic_prompt_set: split must be one of {list(SPLIT_CODES)}, got {split!r}")
    if num < 0:
        raise ValueError(f"prompt_set.synthetic_prompt_set: num must be >= 0, got {num}")
    if not num_people:
        raise ValueError("prompt_set.synthetic_prompt_set: num_people is empty")
    rng = np.random.default_rng([seed, SPLIT_CODES[split]])
    samples = []
    for _ in range(num):
        people = sample_identities(rng, int(rng.choice(list(num_people))), split)
        samples.append(PromptSample(make_prompt(people), [render_reference(p, reference_size) for p in people], people))
    return samples
