"""FSDP2 (`train.sharding: fsdp`) for every recipe: torch's `fully_shard` on a model's repeated
blocks and then on the whole model, so each process holds 1/N of the weights, the trained ones'
gradients and optimizer state, and gathers a block's weights only while it runs. The recipes name
their blocks (stage 1: reward_model/recipe.py; stage 2: finetune/sharding.py).

Why torch's `fully_shard` directly and not accelerate's FSDP plugin: accelerate enables FSDP only on
GPUs, and the same code must run in the CPU tests (2 gloo processes) that compare it with one
process. accelerate still starts the processes and the process group.

What sharding asks of a trainer:
- every process runs the same number of forwards and backwards of the sharded model, since each
  one all-gathers weights with the others: batch lists are padded to the longest process's count
  with `pad_batches`, and the padding's results are dropped (its loss weighs 0);
- gradients are reduced in float32, either summed (each loss already carries its share of the
  global count: stage 2) or averaged over the processes (each loss is its process's mean, as DDP
  would average it: stage 1). Both run as a plain SUM (then a division): a pre-scaled sum or AVG
  is NCCL-only, and gloo runs the CPU tests;
- state leaves a process whole: `full` gathers a sharded tensor (on every process), `distribute`
  puts a whole one back as this process's shard.
"""
from __future__ import annotations

from typing import Iterable, Sequence, TypeVar

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

T = TypeVar("T")


def shard_modules(root: torch.nn.Module, blocks: Iterable[torch.nn.Module], compute_dtype: torch.dtype | None = None,
                  average: bool = False) -> None:
    """Shard every module of `blocks` (each gathered on its own), then `root` (the rest), in place.
    compute_dtype: what gathered weights are cast to (None: as stored); average: gradients are
    divided by the process count after the sum (else left summed)."""
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(root, mp_policy=policy)
    for part in root.modules():  # each sharded block reduces its own gradients
        if isinstance(part, FSDPModule):
            if not average:
                part.set_gradient_divide_factor(1.0)
            part.set_force_sum_reduction_for_comms(True)


def is_sharded(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded one: call it on every process)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part (all of an unsharded tensor)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def distribute(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` laid out as `like` is (its shard on this process), or as it is when `like` is unsharded."""
    if isinstance(like, DTensor):
        return distribute_tensor(whole.to(like.device, like.dtype), like.device_mesh, like.placements)
    return whole.to(like.device, like.dtype)


def pad_batches(accelerator, batches: Sequence[T], filler: T) -> tuple[list[T], int]:
    """`batches` padded with `filler` to the longest process's count; returns (padded, real count).
    The caller runs the padding like a real batch and drops its results."""
    counts = accelerator.gather(torch.tensor([len(batches)], device=accelerator.device))
    return list(batches) + [filler] * (int(counts.max()) - len(batches)), len(batches)


class OptimizerState:
    """An optimizer as a checkpoint part: its state dict, whole (gathered from the shards, on every
    process, when the module is sharded; keyed by parameter name then)."""

    def __init__(self, module: torch.nn.Module, optimizer, sharded: bool):
        self.module, self.optimizer, self.sharded = module, optimizer, sharded

    def state_dict(self) -> dict:
        if not self.sharded:
            return self.optimizer.state_dict()
        return get_optimizer_state_dict(self.module, self._inner(), options=StateDictOptions(full_state_dict=True))

    def load_state_dict(self, state: dict) -> None:
        if not self.sharded:
            self.optimizer.load_state_dict(state)
            return
        set_optimizer_state_dict(self.module, self._inner(), state, options=StateDictOptions(full_state_dict=True))

    def _inner(self):
        return getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
