"""Which samples each process generates at each step, and how they are cut into batches.

The sampler follows Flow-GRPO's distributed repeat sampler: each iteration takes the next
`prompts_per_step` prompts of a seeded endless shuffle, repeats each `group_size` times, shuffles
those samples (the same permutation on every process) and cuts them into one contiguous share per
process, so a group may span processes (advantages then gather rewards first). IPRO uses it with
groups of one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from identity_grpo.core.seeds import Stream, stream_rng


@dataclass(frozen=True)
class SampleSlot:
    """One sample to generate: which prompt, and which group it belongs to."""

    prompt_index: int  # row of the manifest
    group_id: int  # the same on every process for the group's members; unique over the run


class GroupSampler:
    """Which samples each process generates at each iteration (pure function of the step)."""

    def __init__(self, num_prompts: int, group_size: int, prompts_per_step: int,
                 num_processes: int = 1, process_index: int = 0, seed: int = 0):
        total = prompts_per_step * group_size
        if num_prompts < 1 or group_size < 1 or prompts_per_step < 1:
            raise ValueError("batches.GroupSampler: num_prompts, group_size and prompts_per_step must be >= 1")
        if total % num_processes:
            raise ValueError(
                f"batches.GroupSampler: prompts_per_step * group_size = {total} does not split over {num_processes} processes"
            )
        if not 0 <= process_index < num_processes:
            raise ValueError(f"batches.GroupSampler: process_index {process_index} not in [0, {num_processes})")
        self.num_prompts, self.group_size, self.prompts_per_step = num_prompts, group_size, prompts_per_step
        self.num_processes, self.process_index, self.seed = num_processes, process_index, seed
        self.per_process = total // num_processes

    def prompt_indices(self, step: int) -> list[int]:
        """The step's prompts: positions [step * P, (step + 1) * P) of an endless sequence of seeded
        permutations of the manifest, so every prompt is used once before any is used twice."""
        start = step * self.prompts_per_step
        indices = []
        for position in range(start, start + self.prompts_per_step):
            epoch, offset = divmod(position, self.num_prompts)
            indices.append(int(self._permutation(epoch)[offset]))
        return indices

    def _permutation(self, epoch: int) -> torch.Tensor:
        rng = stream_rng(self.seed, Stream.PROMPT_ORDER, epoch)
        return torch.randperm(self.num_prompts, generator=rng)

    def all_slots(self, step: int) -> list[SampleSlot]:
        """Every process's samples of the step, process 0's share first."""
        prompts = self.prompt_indices(step)
        repeated = [
            SampleSlot(index, step * self.prompts_per_step + k) for k, index in enumerate(prompts) for _ in range(self.group_size)
        ]
        order = torch.randperm(len(repeated), generator=stream_rng(self.seed, Stream.GROUP_ORDER, step))
        return [repeated[i] for i in order.tolist()]

    def slots(self, step: int) -> list[SampleSlot]:
        """This process's share of the step's samples."""
        start = self.process_index * self.per_process
        return self.all_slots(step)[start : start + self.per_process]


def sampling_batches(slots: list[SampleSlot], reference_counts: list[int], batch_size: int) -> list[list[SampleSlot]]:
    """Slots cut into batches of at most batch_size whose prompts all have the same number of
    references (the generators encode one reference count per batch): bucketed by count, in
    increasing count, each bucket in its given order."""
    if batch_size < 1:
        raise ValueError(f"batches.sampling_batches: batch_size must be >= 1, got {batch_size}")
    buckets: dict[int, list[SampleSlot]] = {}
    for slot in slots:
        buckets.setdefault(reference_counts[slot.prompt_index], []).append(slot)
    return [
        bucket[start : start + batch_size]
        for _, bucket in sorted(buckets.items())
        for start in range(0, len(bucket), batch_size)
    ]
