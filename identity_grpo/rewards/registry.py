"""The rewards stage 2 can train on, by name, and their weighted sum.

    rewards:                                   # a GRPO config (IPRO: eval_rewards)
      - {name: reward_model, weight: 1.0, path: runs/reward_synthetic/final}
      - {name: world_face_similarity, weight: 10.0}

Built in (REWARDS): `reward_model` (the stage-1 scorer), `face_similarity` and
`face_pool_similarity` (insightface ArcFace, rewards/face_similarity.py), `world_face_similarity`
(the synthetic world's face models). The world's rendering-rule identity measure is deliberately
*not* a reward: it is the independent evaluation measure, and optimizing it would leave nothing
independent to evaluate with.

Your own reward: `REWARDS["mine"] = RewardKind(build, check)`, or the decorator
`@register_reward("mine")` on a builder `(spec, device) -> fn`. See rewards/spec.py for the
function's signature.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from identity_grpo.core.config_io import ConfigError, require_local
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.rewards import face_similarity, reward_model, world_face_similarity
from identity_grpo.rewards.spec import RewardFn, RewardKind, RewardSpec

REWARDS: dict[str, RewardKind] = {
    "reward_model": reward_model.KIND,
    "face_similarity": face_similarity.FACE_SIMILARITY,
    "face_pool_similarity": face_similarity.FACE_POOL_SIMILARITY,
    "world_face_similarity": world_face_similarity.KIND,
}


def register_reward(name: str) -> Callable:
    """Decorator: register a builder `(spec, device) -> fn` under `name` (its options are checked when built)."""

    def add(build):
        REWARDS[name] = RewardKind(build, path="optional")
        return build

    return add


def registered_rewards() -> list[str]:
    return sorted(REWARDS)


def validate_reward_specs(specs: Sequence[RewardSpec], section: str = "rewards") -> None:
    """Names known, each once, weights > 0, each kind's options checked; nothing is loaded.
    `section` is the YAML key the errors name (`rewards[1].options.aggregate: ...`)."""
    seen = set()
    for i, spec in enumerate(specs):
        if spec.name not in REWARDS:
            raise ConfigError(f"{section}[{i}].name: unknown reward {spec.name!r} "
                              f"(registered: {', '.join(registered_rewards())})")
        if spec.name in seen:
            raise ConfigError(f"{section}[{i}].name: {spec.name!r} appears twice")
        seen.add(spec.name)
        if not spec.weight > 0:
            raise ConfigError(f"{section}[{i}].weight must be > 0, got {spec.weight}")
        try:
            REWARDS[spec.name].check(spec)
        except ConfigError as error:
            raise ConfigError(f"{section}[{i}].{error}") from None


def check_reward_inputs(specs: Sequence[RewardSpec], section: str = "rewards") -> None:
    """Every reward's files exist here; the reward model needs its trained folder."""
    for i, spec in enumerate(specs):
        kind = REWARDS.get(spec.name)
        folder = kind is not None and kind.path == "folder"
        if folder and not spec.path:
            raise ConfigError(f"{section}[{i}].path: required for {spec.name} (a trained reward model folder)")
        if spec.path:
            require_local(spec.path, f"{section}[{i}].path", "folder" if folder else "path")
        if kind is not None:
            try:
                kind.check_inputs(spec)
            except ConfigError as error:
                raise ConfigError(f"{section}[{i}].{error}") from None


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
        cls, specs: Sequence[RewardSpec], device: torch.device | str = "cpu", fns: Mapping[str, RewardFn] | None = None,
        section: str = "rewards",
    ) -> "WeightedRewards":
        """Build every configured reward from the registry, or take the ready functions in `fns`
        (keyed by the configured names; the config still gives the weights)."""
        device = torch.device(device)
        if fns is not None:
            missing = [s.name for s in specs if s.name not in fns]
            extra = sorted(set(fns) - {s.name for s in specs})
            if missing or extra:
                raise ConfigError(
                    f"{section}: the reward functions given ({sorted(fns)}) must match the config's rewards "
                    f"({[s.name for s in specs]})"
                )
            built = dict(fns)
        else:
            validate_reward_specs(specs, section)
            built = {}
            for i, spec in enumerate(specs):
                try:
                    built[spec.name] = REWARDS[spec.name].build(spec, device)
                except ConfigError as error:
                    raise ConfigError(f"{section}[{i}].{error}") from None
        return cls(built, {s.name: float(s.weight) for s in specs})

    def __call__(
        self,
        videos: torch.Tensor,
        references: Sequence[Sequence[np.ndarray]],
        prompts: Sequence[str],
        records: Sequence[PromptRecord] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> total [B] float32 (CPU) and each reward's values {name: [B]}. `records` (the B prompt
        records) reach only the functions that declare a `records` keyword. A NaN or inf value is
        returned as it is (and makes the total non-finite): the callers skip and count such samples
        rather than lose the whole batch to one bad value."""
        batch = len(prompts)
        values = {}
        for name, fn in self.fns.items():
            extra = {"records": records} if name in self.takes_records else {}
            value = torch.as_tensor(fn(videos, references, prompts, **extra)).detach().float().cpu().reshape(-1)
            if value.shape != (batch,):
                raise ValueError(f"rewards: {name!r} returned {tuple(value.shape)} values for {batch} clips")
            values[name] = value
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values
