"""Every YAML in configs/ loads and validates with the config class of its folder."""
from pathlib import Path

import pytest

from reward_model.config import RewardConfig
from identity_grpo.core.config_io import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_class(folder: str):
    if folder == "reward":
        return RewardConfig
    if folder in ("grpo", "bench"):  # configs/bench/: GRPO at published shapes, random weights (identity_grpo/bench)
        from identity_grpo.grpo.config import GrpoConfig

        return GrpoConfig
    if folder == "ipro":
        from identity_grpo.ipro.config import IproConfig

        return IproConfig
    raise AssertionError(f"configs/{folder}/ has no config class; add it here")


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads(path, monkeypatch):
    monkeypatch.chdir(CONFIGS.parent)  # configs name paths relative to the repository root
    cfg = load_config(config_class(path.parent.name), path)
    assert cfg.output_dir


def test_reward_configs_match_the_published_recipe():
    cfg = load_config(RewardConfig, CONFIGS / "reward" / "qwen2_5_vl_3b.yaml")
    m, t = cfg.model, cfg.train
    assert m.backbone == "Qwen/Qwen2.5-VL-3B-Instruct" and m.reward_token == "<|SA_reward|>"
    assert (m.lora_r, m.lora_alpha, m.lora_dropout) == (64, 128, 0.05)
    assert m.train_vision_tower and m.train_merger and m.torch_dtype == "bfloat16"
    assert (t.lr, t.loss, t.ties_k, t.epochs, t.mixed_precision) == (2e-6, "btt", 5.0, 3.0, "bf16")
