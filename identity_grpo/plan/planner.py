"""Per-GPU memory of a recipe: what stays resident, what each phase adds, the peak, and the lever
to pull when it does not fit.

    plan = make_plan(config_path, overrides, Launch(gpus=8, gpu_memory=80))
    plan.refusal()   # None when it fits, else one line naming the lever

Launch facts that live outside experiment configs (GPU count, sharding, sequence parallelism,
references per sample) come from `Launch`; everything else from the config (which encoders and
reward models are offloaded, tiled decoding, the frames IPRO decodes with gradients).
"""
from __future__ import annotations

import dataclasses

from pathlib import Path

import yaml

from identity_grpo.core.config_io import load_config
from identity_grpo.plan import activations as act
from identity_grpo.plan.budget import Launch, Plan, PlanError

__all__ = ["Launch", "Plan", "PlanError", "detect_recipe", "make_plan"]


def detect_recipe(raw: dict) -> str:
    """reward / grpo / ipro from a config's top-level sections."""
    if "model" in raw:
        return "reward"
    if "face_reward" in raw or "eval_rewards" in raw or "last_steps" in (raw.get("train") or {}):
        return "ipro"
    if "generator" in raw or "rewards" in raw:
        return "grpo"
    raise PlanError("cannot tell the recipe: no 'model' (reward), 'face_reward' (ipro) or 'generator' (grpo) section")


def make_plan(path: str | Path, overrides: list[str], launch: Launch, coefficients: dict | None = None) -> Plan:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    recipe = detect_recipe(raw)
    launch.validate(recipe)
    config_class, plan = _recipe(recipe)
    cfg = load_config(config_class, path, overrides)
    if recipe != "reward" and launch.shard == "auto":  # stage 2 shards as its config says (train.sharding)
        launch = dataclasses.replace(launch, shard=cfg.train.sharding)
    if not launch.sequence_parallel:  # not given: as the config says (IPRO's train.sequence_parallel)
        launch = dataclasses.replace(launch, sequence_parallel=getattr(cfg.train, "sequence_parallel", 1))
        launch.validate(recipe)
    return plan(str(path), cfg, launch, coefficients or act.load_coefficients())


def _recipe(name: str):
    """The recipe's config class and plan function, imported only now (the config classes pull in
    diffusers or transformers)."""
    if name == "reward":
        from identity_grpo.plan.reward import plan_reward
        from reward_model.config import RewardConfig

        return RewardConfig, plan_reward
    if name == "ipro":
        from identity_grpo.ipro.config import IproConfig
        from identity_grpo.plan.ipro import plan_ipro

        return IproConfig, plan_ipro
    from identity_grpo.grpo.config import GrpoConfig
    from identity_grpo.plan.grpo import plan_grpo

    return GrpoConfig, plan_grpo
