"""The trained policy of both fine-tuning methods: a LoRA on the generator's transformer, its
optimizer and (GRPO) its EMA; and the gradient averaging over processes both use."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from identity_grpo.finetune.ema import ParameterEMA
from identity_grpo.core.sharding import is_sharded
from identity_grpo.generators.base import Generator


@dataclass
class Policy:
    """What the update trains: the LoRA on the generator's transformer."""

    generator: Generator  # the view training forwards run through (guidance as configured)
    transformer: torch.nn.Module  # carries the adapter; switching it off gives the reference policy
    params: list[torch.nn.Parameter]  # the adapter's parameters, float32
    optimizer: torch.optim.Optimizer
    ema: ParameterEMA | None
    sharded: bool = False  # the transformer is FSDP-sharded: forwards are collectives (finetune/sharding.py)

    def ema_weights(self):
        """A context in which the LoRA holds its EMA (the raw weights when there is no EMA)."""
        return self.ema.swapped_in() if self.ema is not None else nullcontext()


def average_gradients(accelerator, params: list[torch.nn.Parameter]) -> None:
    """Sum the (already 1/total-scaled) gradients over processes in one flat all-reduce; a process
    with nothing to train contributes zeros."""
    if accelerator.num_processes == 1 or any(is_sharded(p) for p in params):
        return  # one process, or FSDP: its reduce-scatter already summed them
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), "sum")
    for param, part in zip(params, flat.split([g.numel() for g in grads])):
        param.grad = part.view_as(param)
