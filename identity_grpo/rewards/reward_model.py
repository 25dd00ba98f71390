"""The stage-1 identity reward model as a stage-2 reward (reward_model.scorer.RewardScorer).

    rewards:
      - {name: reward_model, weight: 1.0, path: runs/reward_synthetic/final, options: {batch_size: 32, dtype: bfloat16}}
"""
from __future__ import annotations

import torch

from identity_grpo.core.config_io import ConfigError
from identity_grpo.rewards.spec import RewardFn, RewardKind, RewardSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OPTIONS = ("batch_size", "dtype")


def check(spec: RewardSpec) -> None:
    for key in spec.options:
        if key not in OPTIONS:
            raise ConfigError(f"options.{key}: unknown option for reward_model (known: {', '.join(OPTIONS)})")
    if "dtype" in spec.options and spec.options["dtype"] not in DTYPES:
        raise ConfigError(f"options.dtype: one of {', '.join(DTYPES)}, got {spec.options['dtype']!r}")
    batch_size = spec.options.get("batch_size", 8)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"options.batch_size: an integer >= 1, got {batch_size!r}")


def build(spec: RewardSpec, device: torch.device) -> RewardFn:
    from reward_model.scorer import RewardScorer  # transformers takes seconds to import

    check(spec)
    dtype = DTYPES[spec.options["dtype"]] if "dtype" in spec.options else None
    scorer = RewardScorer.from_pretrained(spec.path, device=device, dtype=dtype,
                                          batch_size=int(spec.options.get("batch_size", 8)))
    return scorer.score


KIND = RewardKind(build, check, path="folder")
