"""Exponential moving average of the trainable (LoRA) parameters, used for evaluation and saving.

    ema <- d * ema + (1 - d) * theta,   d = min(decay, (1 + n) / (10 + n)) with warmup, else decay

n counts the updates done so far. The warmup (Flow-GRPO's EMA) lets the average follow the first
updates instead of staying at the initial LoRA, which with decay 0.9 would otherwise weigh ~10
steps of history from step one. Training always continues on the raw parameters.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from identity_grpo.core.sharding import distribute, full


class ParameterEMA:
    def __init__(self, parameters: Sequence[torch.nn.Parameter], decay: float, warmup: bool = True):
        if not 0 <= decay < 1:
            raise ValueError(f"ema.ParameterEMA: decay must be in [0, 1), got {decay}")
        self.parameters = list(parameters)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = [p.detach().float().clone() for p in self.parameters]  # float32 copies, one per parameter

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for shadow, param in zip(self.shadow, self.parameters):
            shadow.mul_(decay).add_(param.detach().float(), alpha=1 - decay)
        self.num_updates += 1

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The parameters hold the averages inside the block, their own values again after it."""
        backup = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for shadow, param in zip(self.shadow, self.parameters):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for saved, param in zip(backup, self.parameters):
                    param.copy_(saved)

    def state_dict(self) -> dict:
        """Whole averages (gathered from the shards of a sharded LoRA: call it on every process)."""
        return {"shadow": [full(s).cpu() for s in self.shadow], "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        shadow = state["shadow"]
        if len(shadow) != len(self.shadow) or any(a.shape != b.shape for a, b in zip(shadow, self.shadow)):
            raise ValueError("ema.ParameterEMA.load_state_dict: the saved averages do not fit these parameters")
        self.shadow = [distribute(s.float(), like).clone() for s, like in zip(shadow, self.shadow)]
        self.num_updates = int(state["num_updates"])
