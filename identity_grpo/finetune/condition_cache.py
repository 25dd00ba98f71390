"""Encoded conditions (text embeddings, reference latents, conditioning-video latents) computed once
per prompt and reused: by a group's members, by later iterations that draw the prompt again, and
by every IPRO micro-batch. Without it a batch of 16 samples of 2 prompts runs the text encoder and
the VAE encoder 16 times, and IPRO VAE-encodes a conditioning video for every micro-batch.

    cache = ConditionCache(generator, capacity=256)   # speed.condition_cache; 0: encode every batch
    conds = cache.encode(keys, prompts, references)   # keys: the samples' prompt indices

The generator's text encoder and VAE are frozen, so a prompt's conditions never change during a
run. A prompt encoded alone or in another batch can differ from the batched encoding in the last
float bits (the VAE's convolutions may pick other kernels per batch size), which is why the
cache is off by default: runs without it stay bitwise those of the plain path. The oldest
prompts are dropped first once `capacity` prompts are held.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from identity_grpo.generators.base import Conditions, Generator


def concatenate_conditions(parts: Sequence[Conditions]) -> Conditions:
    """One Conditions of the parts' samples in order (every part holds the same tensor names)."""
    names = parts[0].tensors.keys()
    return Conditions({n: torch.cat([p.tensors[n] for p in parts]) for n in names},
                      [prompt for p in parts for prompt in p.prompts])


class ConditionCache:
    """Conditions per prompt key, each held as a batch of one (at most `capacity` keys)."""

    def __init__(self, generator: Generator, capacity: int):
        if capacity < 0:
            raise ValueError(f"condition_cache.ConditionCache: capacity must be >= 0, got {capacity}")
        self.generator, self.capacity = generator, capacity
        self.held: OrderedDict[int, Conditions] = OrderedDict()
        self.encoded = 0  # prompts run through the encoders (to report what the cache saved)
        self.requested = 0  # samples asked for

    @torch.no_grad()
    def encode(self, keys: Sequence[int], prompts: Sequence[str],
               references: Sequence[Sequence[np.ndarray]]) -> Conditions:
        """The conditions of len(keys) samples (sample i is prompt keys[i], with prompts[i] and
        references[i]); with capacity 0, the generator's plain batched encoding."""
        self.requested += len(keys)
        if self.capacity == 0:
            self.encoded += len(keys)
            return self.generator.encode_conditions(prompts, references)
        missing = list(dict.fromkeys(k for k in keys if k not in self.held))  # unique, first-seen order
        if missing:
            first = {k: keys.index(k) for k in missing}
            fresh = self.generator.encode_conditions([prompts[first[k]] for k in missing],
                                                     [references[first[k]] for k in missing])
            self.encoded += len(missing)
            for row, key in enumerate(missing):
                self.held[key] = fresh.select([row])
        for key in keys:
            self.held.move_to_end(key)  # the most recently used are kept longest
        conds = concatenate_conditions([self.held[k] for k in keys])
        while len(self.held) > self.capacity:
            self.held.popitem(last=False)
        return conds
