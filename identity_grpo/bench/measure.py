"""What the benchmark measures beside the phase timer: peak memory, the device's matrix-multiply
peak and the FLOPs of a block of work (for model FLOP utilization).

FLOPs are counted by torch's FlopCounterMode (matmuls, convolutions and attention, the work that
dominates a transformer; elementwise work is not counted, as MFU conventionally does not). The peak
is measured, not taken from a data sheet: the FLOP/s of a large square matmul in the compute dtype
(bf16 on a GPU, float32 on a CPU) on this device, so MFU reads "share of what this device's
matmuls reach".
"""
from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode


def peak_memory_gb(device: torch.device) -> tuple[str, float]:
    """(what was measured, GB): CUDA's peak allocation on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return "cuda_max_allocated", torch.cuda.max_memory_allocated(device) / 1e9
    return "cpu_peak_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def synchronizer(device: torch.device):
    """What the phase timer calls at a phase's ends: CUDA runs asynchronously, the CPU does not."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def matmul_peak_flops(device: torch.device, size: int = 0, repeats: int = 5) -> tuple[str, float]:
    """(dtype name, FLOP/s) of the best of `repeats` size x size matmuls (after a warm-up)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = synchronizer(device) or (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - started)
    return str(dtype).removeprefix("torch."), 2 * size**3 / best


class FlopsByPhase:
    """A timer-shaped record (core/timing.py's interface) that counts FLOPs per phase instead of
    seconds; run one iteration with it as the recipe's timer inside `counting()`."""

    def __init__(self):
        self.flops: dict[str, float] = {}
        self.counter = FlopCounterMode(display=False)

    @contextmanager
    def counting(self) -> Iterator[None]:
        with self.counter:
            yield

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        before = self.counter.get_total_flops()
        try:
            yield
        finally:
            self.flops[name] = self.flops.get(name, 0.0) + float(self.counter.get_total_flops() - before)
