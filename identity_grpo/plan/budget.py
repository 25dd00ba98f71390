"""The plan as data: launch facts, what a GPU holds (items), the phases, and the verdict.

Bytes are decimal GB (1e9), so "80 GB" leaves an 80 GB card (85.9e9 bytes) some room.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GB = 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class PlanError(ValueError):
    """A config the planner cannot size (e.g. an architecture it has no coefficients for)."""


@dataclass
class Launch:
    gpus: int = 8
    gpu_memory: float = 80.0  # GB per GPU
    shard: str = "auto"  # fsdp (stage 2's default), zero2 (stage 1's default), none
    sequence_parallel: int = 0  # GPUs that split one sample's tokens (Ulysses); 0: the config's train.sequence_parallel
    people: int = 3  # references per sample (the published data has 2-3 people per clip)
    reserve: float = 3.0  # GB for the CUDA context, NCCL buffers and allocator fragmentation
    reward_text_tokens: int = 200  # instruction + prompt + chat markers in the reward model's input

    def validate(self, recipe: str) -> None:
        allowed = ("zero2", "none") if recipe == "reward" else ("fsdp", "none")
        if self.shard not in ("auto", *allowed):
            raise PlanError(f"--shard {self.shard}: the {recipe} recipe takes {' or '.join(allowed)}")
        if self.gpus < 1 or self.gpu_memory <= 0 or self.people < 1 or self.reserve < 0:
            raise PlanError("--gpus, --gpu-memory and --people must be positive, --reserve >= 0")
        if not self.sequence_parallel:
            return  # taken from the config, then checked again
        if self.sequence_parallel < 1 or self.gpus % self.sequence_parallel:
            raise PlanError(f"--sequence-parallel {self.sequence_parallel} must divide --gpus {self.gpus}")
        if self.sequence_parallel > 1 and recipe != "ipro":
            raise PlanError("--sequence-parallel: only IPRO's 81-frame samples need their tokens split over GPUs")

    def sharding(self, recipe: str) -> str:
        return ("zero2" if recipe == "reward" else "fsdp") if self.shard == "auto" else self.shard


@dataclass
class Item:
    name: str
    bytes: float
    lever: str  # what to change when this item is what does not fit


@dataclass
class Phase:
    name: str
    items: list[Item]

    @property
    def total(self) -> float:
        return sum(i.bytes for i in self.items)


@dataclass
class Plan:
    config: str
    recipe: str
    launch: Launch
    resident: list[Item]
    phases: list[Phase]
    assumptions: list[str] = field(default_factory=list)

    @property
    def resident_total(self) -> float:
        return sum(i.bytes for i in self.resident)

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)

    @property
    def peak(self) -> float:
        return self.resident_total + self.peak_phase.total

    @property
    def usable(self) -> float:
        return (self.launch.gpu_memory - self.launch.reserve) * GB

    def refusal(self) -> str | None:
        """None if the peak fits; else one line naming the largest item of the peak phase's lever."""
        if self.peak <= self.usable:
            return None
        largest = max([*self.resident, *self.peak_phase.items], key=lambda i: i.bytes)
        return (f"{self.config} does not fit: {self.peak / GB:.1f} GB per GPU in phase '{self.peak_phase.name}' > "
                f"{self.usable / GB:.1f} GB usable; largest part: {largest.name} ({largest.bytes / GB:.1f} GB); "
                f"lever: {largest.lever}")
