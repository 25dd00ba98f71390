"""Sequence parallelism (`train.sequence_parallel: N`) for the Wan transformer: the N processes of a
group split each sample's video tokens, so one 81x480x832 sample (32,760 tokens) fits where its
activations on one GPU would not. Every group runs the same samples; groups are data parallel.

Implementation: diffusers' context parallelism (`ModelMixin.enable_parallelism` with a
`ContextParallelConfig`, Ulysses flavour). `WanTransformer3DModel` declares where the tokens split
(`_cp_plan`: the rotary tables and the first block's input split along the sequence, the output
projection gathers); in attention an all-to-all trades the sequence split for a head split, so each
process attends over all tokens for 1/N of the heads. Ulysses, not ring attention: diffusers' ring
needs an attention kernel that returns log-sum-exps (flash / cuDNN), while Ulysses runs on torch's
SDPA ("native" backend) on GPUs and on the CPU (gloo) where the tests compare it with one process.

What it asks of a trainer: the processes of a group hold the same sample (same prompts, same noise)
and compute the same loss; backward gives each process the gradient through its own tokens, so the
group's gradients are summed (as FSDP and the hand all-reduce of stage 2 sum over all processes);
values summed over all processes count each sample N times.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from unittest import mock

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from identity_grpo.core.config_io import ConfigError


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the sample-holding groups: `size` groups, this one is `rank`."""

    size: int = 1
    rank: int = 0


def data_parallel(num_processes: int, process_index: int, degree: int) -> DataParallel:
    """Groups are consecutive processes (as the mesh below lays them out): 0..N-1, N..2N-1, ..."""
    return DataParallel(num_processes // degree, process_index // degree)


def check_splittable(transformer: torch.nn.Module, degree: int, name: str = "transformer") -> None:
    """The transformer declares its split points and its heads divide over the group."""
    if getattr(type(transformer), "_cp_plan", None) is None:
        raise ConfigError(f"train.sequence_parallel={degree}: {name} ({type(transformer).__name__}) declares no "
                          "sequence split in diffusers (only WanTransformer3DModel does: generator.kind i2v)")
    heads = transformer.config.num_attention_heads
    if heads % degree:
        raise ConfigError(f"train.sequence_parallel={degree} must divide the {name}'s {heads} attention heads")


def enable_sequence_parallel(transformers: list[torch.nn.Module], degree: int) -> DataParallel:
    """Split each of `transformers` (a generator's experts) over groups of `degree` processes; call
    on every process, after the process group starts and before sharding. Returns the data-parallel
    coordinates the trainer's sampler and noise follow."""
    from diffusers.models._modeling_parallel import ContextParallelConfig

    world, rank = dist.get_world_size(), dist.get_rank()
    if world % degree:
        raise ConfigError(f"train.sequence_parallel={degree} must divide the {world} processes of the launch")
    for transformer in transformers:
        check_splittable(transformer, degree)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (world // degree, 1, degree), mesh_dim_names=("data", "ring", "ulysses"))
    for transformer in transformers:
        transformer.set_attention_backend("native")  # torch SDPA: Ulysses-capable, on GPUs and CPUs
        with _cpu_device_index():
            transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree, mesh=mesh))
    return data_parallel(world, rank, degree)


@contextlib.contextmanager
def _cpu_device_index():
    """diffusers 0.42.1 records the process's device as rank % torch.accelerator.device_count(),
    which divides by zero on a machine without GPUs (the CPU tests); the device it records is
    never used for CPU tensors, so there it counts one device."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    with mock.patch.object(torch.accelerator, "device_count", return_value=1):
        yield
