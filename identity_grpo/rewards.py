"""Reward functions by name, and their weighted sum.

A reward function scores decoded clips:

    fn(videos [B, T, H, W, 3] float in [0, 1], references: B lists of uint8 [h, w, 3], prompts: B str) -> [B]

A reward that needs more than the references (e.g. a pool of ground-truth faces named by the
prompt manifest) also declares a keyword `records`: the batch's B `PromptRecord`s, passed only
to functions that declare it.

A *builder* makes one from its config entry (`RewardSpec`: name, weight, path, options) and the
device; builders are registered by name:

    @register_reward("face_similarity")
    def build_face_similarity(spec: RewardSpec, device: torch.device) -> RewardFn: ...

A builder reports a bad option as `ConfigError("options.<key>: ...")`; `from_config` adds which
reward it is (`rewards[i].options.<key>: ...`).

`reward_model` (the stage-1 scorer) is built in, and so are the face rewards of
identity_grpo/face_reward.py (`face_similarity`, `face_pool_similarity`) and the synthetic world's
face similarity (identity_grpo/synthetic/world_reward.py, `world_face_similarity`). The world's rendering-rule
identity measure is deliberately *not* registered: it is the independent evaluation measure, and
optimizing it would leave nothing independent to evaluate with.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from identity_grpo.config import RewardSpec
from identity_grpo.prompts import PromptRecord
from reward_model.config_io import ConfigError

RewardFn = Callable[[torch.Tensor, Sequence[Sequence[np.ndarray]], Sequence[str]], torch.Tensor]
RewardBuilder = Callable[[RewardSpec, torch.device], RewardFn]

_BUILDERS: dict[str, RewardBuilder] = {}


def register_reward(name: str) -> Callable[[RewardBuilder], RewardBuilder]:
    """Decorator registering a builder under `name` (a later registration replaces an earlier one)."""

    def add(builder: RewardBuilder) -> RewardBuilder:
        _BUILDERS[name] = builder
        return builder

    return add


def registered_rewards() -> list[str]:
    return sorted(_BUILDERS)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_reward("reward_model")
def build_reward_model(spec: RewardSpec, device: torch.device) -> RewardFn:
    """The stage-1 identity reward model. Options: dtype (float32 | bfloat16 | float16), batch_size."""
    from reward_model.scorer import RewardScorer

    unknown = set(spec.options) - {"dtype", "batch_size"}
    if unknown:
        raise ValueError(f"rewards: reward_model options {sorted(unknown)} unknown (known: batch_size, dtype)")
    dtype = _DTYPES[spec.options["dtype"]] if "dtype" in spec.options else None
    scorer = RewardScorer.from_pretrained(
        spec.path, device=device, dtype=dtype, batch_size=int(spec.options.get("batch_size", 8))
    )
    return scorer.score


@dataclass
class WeightedRewards:
    """total = sum_i weight_i * reward_i; every reward's own values are kept for logging."""

    fns: dict[str, RewardFn]
    weights: dict[str, float]
    takes_records: set[str] = field(init=False)  # the functions that declare a `records` keyword

    def __post_init__(self) -> None:
        if set(self.fns) != set(self.weights):
            raise ValueError(f"rewards.WeightedRewards: functions {sorted(self.fns)} vs weights {sorted(self.weights)}")
        self.takes_records = {name for name, fn in self.fns.items() if "records" in inspect.signature(fn).parameters}

    @classmethod
    def from_config(
        cls, specs: Sequence[RewardSpec], device: torch.device | str = "cpu", fns: Mapping[str, RewardFn] | None = None
    ) -> "WeightedRewards":
        """Build every configured reward from the registry, or take the ready functions in `fns`
        (keyed by the configured names; the config still gives the weights)."""
        device = torch.device(device)
        if fns is not None:
            missing = [s.name for s in specs if s.name not in fns]
            extra = sorted(set(fns) - {s.name for s in specs})
            if missing or extra:
                raise ValueError(
                    f"rewards: the reward functions given ({sorted(fns)}) must match the config's rewards "
                    f"({[s.name for s in specs]})"
                )
            built = dict(fns)
        else:
            built = {}
            for i, spec in enumerate(specs):
                if spec.name not in _BUILDERS:
                    raise ValueError(f"rewards[{i}].name: unknown reward {spec.name!r} (registered: {registered_rewards()})")
                try:
                    built[spec.name] = _BUILDERS[spec.name](spec, device)
                except ConfigError as error:
                    raise ConfigError(f"rewards[{i}].{error}") from None
        return cls(built, {s.name: float(s.weight) for s in specs})

    def __call__(
        self,
        videos: torch.Tensor,
        references: Sequence[Sequence[np.ndarray]],
        prompts: Sequence[str],
        records: Sequence[PromptRecord] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> total [B] float32 (CPU) and each reward's values {name: [B]}. `records` (the B prompt
        records) reach only the functions that declare a `records` keyword."""
        batch = len(prompts)
        values = {}
        for name, fn in self.fns.items():
            extra = {"records": records} if name in self.takes_records else {}
            value = torch.as_tensor(fn(videos, references, prompts, **extra)).detach().float().cpu().reshape(-1)
            if value.shape != (batch,):
                raise ValueError(f"rewards: {name!r} returned {tuple(value.shape)} values for {batch} clips")
            if not torch.isfinite(value).all():
                raise ValueError(f"rewards: {name!r} returned NaN or inf")
            values[name] = value
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values


# Last: these rewards register themselves with the decorator above (they import this module).
from identity_grpo import face_reward  # noqa: E402,F401
from identity_grpo.synthetic import world_reward  # noqa: E402,F401
