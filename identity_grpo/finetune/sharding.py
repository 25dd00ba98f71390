"""FSDP2 for the generator transformer (`train.sharding: fsdp`; the mechanism and what it asks of
the trainers: core/sharding.py): every transformer block sharded on its own, then the whole model.
Stage 2's losses each carry their share of the global sample count (as the hand all-reduce of
unsharded runs sums them), so the gradients are summed, not averaged."""
from __future__ import annotations

import torch

from identity_grpo.core.sharding import shard_modules

BLOCK_LISTS = ("blocks", "vace_blocks")  # the diffusers Wan transformers' repeated blocks


def shard_transformer(module: torch.nn.Module, compute_dtype: torch.dtype | None = None) -> None:
    """Shard `module` in place. compute_dtype: what the gathered weights are cast to (the base
    weights' dtype, e.g. bf16, while the LoRA stays float32); gradients are reduced in float32."""
    blocks = [block for name in BLOCK_LISTS for block in getattr(module, name, None) or []]
    shard_modules(module, blocks, compute_dtype, average=False)
