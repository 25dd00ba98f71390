"""Seconds spent per named phase of a training step, for the benchmark (identity_grpo/bench).

A recipe holds one timer and passes it down to the loops that run the phases; by default it is
`NO_TIMING`, whose phases cost nothing, so training runs are unchanged:

    with timer.phase("vae_decode"):
        videos = gen.decode(latents)

On a GPU the timer synchronizes the device at both ends of a phase (CUDA kernels run
asynchronously: without it a phase would be charged for the previous one's kernels). Phases do
not nest: what no phase covers is the step's overhead.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator


class PhaseTimer:
    """Wall-clock seconds and call counts per phase name, summed over every call."""

    def __init__(self, synchronize: Callable[[], None] | None = None):
        self.synchronize = synchronize or (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.synchronize()
            self.seconds[name] += time.perf_counter() - started
            self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class NoTiming:
    """The timer of an ordinary run: phases are plain blocks."""

    def phase(self, name: str):
        return nullcontext()


NO_TIMING = NoTiming()
