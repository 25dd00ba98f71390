"""What a reward is: its config entry, the function it becomes, and how both are checked.

A reward function scores decoded clips:

    fn(videos [B, T, H, W, 3] float in [0, 1], references: B lists of uint8 [h, w, 3], prompts: B str) -> [B]

A reward that needs more than the references (e.g. a pool of ground-truth faces named by the
prompt manifest) also declares a keyword `records`: the batch's B `PromptRecord`s, passed only
to functions that declare it.

A `RewardKind` makes one from its config entry and the device (`build`), checks the entry
without loading anything (`check`, with the config) and the files its options name
(`check_inputs`, with the inputs), so a bad option is a one-line error before any model loads.
Each reports a bad option as `ConfigError("options.<key>: ...")`; the caller adds which reward it
is (`rewards[i].options.<key>: ...`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

RewardFn = Callable[[torch.Tensor, Sequence[Sequence[np.ndarray]], Sequence[str]], torch.Tensor]


@dataclass
class RewardSpec:
    """One reward of the weighted sum; `name` is a key of identity_grpo.rewards.registry."""

    name: str = "reward_model"
    weight: float = 1.0
    path: str = ""  # reward_model: a folder written by RewardModel.save_pretrained (or the original release)
    options: dict[str, Any] = field(default_factory=dict)  # passed to the reward's builder


def no_check(spec: RewardSpec) -> None:
    """For kinds whose options are checked when they are built."""


@dataclass(frozen=True)
class RewardKind:
    build: Callable[[RewardSpec, torch.device], RewardFn]
    check: Callable[[RewardSpec], None] = no_check  # raises ConfigError("<field>: ...") without loading
    path: str = "optional"  # "folder": spec.path is required and must be a folder (checked with the inputs)
    check_inputs: Callable[[RewardSpec], None] = no_check  # the files the options name are here (after path)
