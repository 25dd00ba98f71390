"""The stage-1 identity reward model as a stage-2 reward (reward_model.scorer.RewardScorer).

    rewards:
      - {name: reward_model, weight: 1.0, path: runs/reward_synthetic/final, options: {batch_size: 32, dtype: bfloat16}}
      - {name: reward_model, path: release/, options: {instruction_file: release_instruction.txt}}

`offload: true`: the model stays on the CPU except while it scores (rewards/offload.py).
`instruction_file`: for a checkpoint of the original release only, the instruction text it was
trained with (the folder's own instruction.txt is read when this is not given; see
reward_model/original_release.py).
"""
from __future__ import annotations

import torch

from identity_grpo.core.config_io import ConfigError, require_local
from identity_grpo.rewards.offload import OffloadedScorer
from identity_grpo.rewards.spec import RewardFn, RewardKind, RewardSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OPTIONS = ("batch_size", "dtype", "instruction_file", "offload")


def check(spec: RewardSpec) -> None:
    for key in spec.options:
        if key not in OPTIONS:
            raise ConfigError(f"options.{key}: unknown option for reward_model (known: {', '.join(OPTIONS)})")
    if "dtype" in spec.options and spec.options["dtype"] not in DTYPES:
        raise ConfigError(f"options.dtype: one of {', '.join(DTYPES)}, got {spec.options['dtype']!r}")
    batch_size = spec.options.get("batch_size", 8)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"options.batch_size: an integer >= 1, got {batch_size!r}")
    if not isinstance(spec.options.get("offload", False), bool):
        raise ConfigError(f"options.offload: true or false, got {spec.options['offload']!r}")
    file = spec.options.get("instruction_file")
    if "instruction_file" in spec.options and (not isinstance(file, str) or not file):
        raise ConfigError(f"options.instruction_file: a text file's path, got {file!r}")


def check_inputs(spec: RewardSpec) -> None:
    """The instruction file is here, places the reward token, and the checkpoint is one that takes it."""
    if "instruction_file" not in spec.options:
        return
    path = spec.options["instruction_file"]
    require_local(path, "options.instruction_file", "file")
    from reward_model.original_release import CONFIG_FILE, is_original_release, read_instruction

    if not is_original_release(spec.path):
        raise ConfigError(f"options.instruction_file: only a checkpoint of the original release ({CONFIG_FILE} beside "
                          f"checkpoint-N/) takes one; {spec.path} is not one (a RewardModel folder keeps its prompt)")
    try:
        read_instruction(path)
    except ValueError as error:
        raise ConfigError(f"options.instruction_file: {error}") from None


def build(spec: RewardSpec, device: torch.device) -> RewardFn:
    from reward_model.original_release import read_instruction
    from reward_model.scorer import RewardScorer  # transformers takes seconds to import

    check(spec)
    dtype = DTYPES[spec.options["dtype"]] if "dtype" in spec.options else None
    file = spec.options.get("instruction_file")
    offload = spec.options.get("offload", False)
    scorer = RewardScorer.from_pretrained(spec.path, device="cpu" if offload else device, dtype=dtype,
                                          batch_size=int(spec.options.get("batch_size", 8)),
                                          instruction=read_instruction(file) if file else None)
    return OffloadedScorer(scorer, device) if offload else scorer.score


KIND = RewardKind(build, check, path="folder", check_inputs=check_inputs)
