"""Which pairs each process trains on, micro-batch after micro-batch, resumable from any position.

Epoch e visits the training pairs in a permutation drawn from the PAIR_ORDER stream (seed, e): a
pure function of the seed and the position, so a run resumed at micro-batch m sees exactly the
pairs an uninterrupted run would, whatever the random generators did in between. Each global batch
of batch_size * num_processes pairs is cut into one micro-batch per process; the pairs left over
at an epoch's end are dropped (a set smaller than one global batch wraps around instead).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from identity_grpo.core.seeds import Stream, stream_rng


class PairOrder(Sampler[list[int]]):
    """An endless batch sampler: this process's micro-batches from micro-batch `start` on."""

    def __init__(self, num_pairs: int, batch_size: int, num_processes: int = 1, process_index: int = 0,
                 seed: int = 0, start: int = 0):
        if num_pairs < 1 or batch_size < 1:
            raise ValueError(f"pair_order.PairOrder: need pairs and a batch size, got {num_pairs}, {batch_size}")
        self.num_pairs, self.batch_size, self.seed, self.start = num_pairs, batch_size, seed, start
        self.num_processes, self.process_index = num_processes, process_index
        self.global_batch = batch_size * num_processes
        self.batches_per_epoch = max(1, num_pairs // self.global_batch)
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def micro_batch(self, position: int) -> list[int]:
        """This process's pair indices of the position-th micro-batch of the run."""
        epoch, batch = divmod(position, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = torch.randperm(self.num_pairs, generator=stream_rng(self.seed, Stream.PAIR_ORDER, epoch))
        order = self._order
        first = batch * self.global_batch + self.process_index * self.batch_size
        return [int(order[(first + j) % self.num_pairs]) for j in range(self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start
        while True:
            yield self.micro_batch(position)
            position += 1
