"""Stage-1 training end to end on a handful of synthetic pairs (tiny model, seconds)."""
import json

import torch
from accelerate.utils import set_seed

from reward_model.config import RewardConfig
from identity_grpo.core.config_io import load_config
from reward_model.model import RewardModel, build_reward_model
from identity_grpo.world.identities import vocabulary
from reward_model.recipe import train_reward_model
from tests_support import TINY_REWARD_OVERRIDES


def tiny_config(tmp_path, *overrides) -> RewardConfig:
    return load_config(RewardConfig, "configs/reward/synthetic.yaml", [
        *TINY_REWARD_OVERRIDES, f"output_dir={tmp_path / 'run'}", f"data.synthetic.out_dir={tmp_path / 'pairs'}", *overrides,
    ])


def test_two_steps_change_every_trainable_parameter_and_no_frozen_one(tmp_path):
    cfg = tiny_config(tmp_path)
    set_seed(cfg.train.seed)  # the trainer seeds the same way before it builds the model
    initial = build_reward_model(cfg.model, vocabulary())
    trainable = {n for n, p in initial.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and "rm_head.weight" in trainable and "reward_embedding" in trainable
    assert not any("language_model" in n and "lora_" not in n for n in trainable)  # LoRA only in the LM
    before = {n: p.detach().clone() for n, p in initial.named_parameters()}

    metrics = train_reward_model(cfg)

    after = dict(RewardModel.from_pretrained(tmp_path / "run" / "final").named_parameters())
    assert set(after) == set(before)
    for name, value in before.items():
        changed = not torch.equal(value, after[name].detach())
        assert changed == (name in trainable), f"{name}: changed={changed}, trainable={name in trainable}"
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"accuracy", "tie_accuracy", "baseline_accuracy", "num_test_pairs", "reference_swap"} <= set(saved)
    assert set(saved["reference_swap"]) == {"accuracy", "mean_margin", "num_clips"}
    assert saved["num_test_pairs"] == 6 and metrics["num_test_pairs"] == 6
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "train/loss" in entry] == [1, 2]


def test_rerun_resumes_from_the_saved_state(tmp_path):
    train_reward_model(tiny_config(tmp_path))
    train_reward_model(tiny_config(tmp_path, "train.max_steps=3"))
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000003" / "state.json").read_text())
    assert state["step"] == 3 and state["micro_step"] == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "train/loss" in entry] == [1, 2, 3]  # step 3 only, not 1-3 again
