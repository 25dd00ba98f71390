"""The stage-1 config: every count checked before any model loads, files checked only by validate_inputs."""
import csv
from pathlib import Path

import pytest

import train_reward
from identity_grpo.core.config_io import ConfigError, load_config
from reward_model.config import RewardConfig
from reward_model.pair_dataset import load_splits

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ROOT / "configs/reward/synthetic.yaml"


@pytest.mark.parametrize("override, message", [
    ("train.log_every=0", "train.log_every must be >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.grad_accum_steps=0", "train.grad_accum_steps must be >= 1, got 0"),
    ("train.eval_every=-1", "train.eval_every must be >= 0, got -1"),
    ("train.save_every=-1", "train.save_every must be >= 0, got -1"),
    ("train.warmup_steps=-1", "train.warmup_steps must be >= 0, got -1"),
    ("train.epochs=-1", "train.epochs must be >= 0, got -1.0"),
    ("train.lr=0", "train.lr must be > 0, got 0.0"),
    ("train.max_grad_norm=0", "train.max_grad_norm must be > 0, got 0.0"),
    ("train.ties_k=1", "train.ties_k must be > 1 for the ties loss, got 1.0"),
    ("pretrain.steps=0", "pretrain.steps must be >= 1, got 0"),
    ("pretrain.batch_size=0", "pretrain.batch_size must be >= 1, got 0"),
    ("pretrain.warmup_steps=-1", "pretrain.warmup_steps must be >= 0, got -1"),
    ("pretrain.lr=0", "pretrain.lr must be > 0, got 0.0"),
    ("pretrain.vision_steps=-1", "pretrain.vision_steps must be >= 0, got -1"),
    ("pretrain.vision_lr=0", "pretrain.vision_lr must be > 0, got 0.0"),
    ("pretrain.distractor_share=1.5", "pretrain.distractor_share must be in [0, 1], got 1.5"),
    ("pretrain.lookup_layer=4", "pretrain.lookup_layer must be below model.tiny.layers (4), got 4"),
    ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
    ("data.synthetic.num_train=0", "data.synthetic.num_train must be >= 1, got 0"),
    ("data.synthetic.num_val=0", "data.synthetic.num_val must be >= 1, got 0"),
    ("data.synthetic.num_test=0", "data.synthetic.num_test must be >= 1, got 0"),
    ("data.synthetic.num_frames=0", "data.synthetic.num_frames must be >= 1, got 0"),
    ("data.synthetic.height=0", "data.synthetic.height must be >= 1, got 0"),
    ("model.num_frames=0", "model.num_frames must be >= 1, got 0"),
    ("model.max_pixels=0", "model.max_pixels must be >= 1, got 0"),
    ("model.min_pixels=4000", "model.min_pixels must be in [1, model.max_pixels], got 4000"),
    ("model.lora_r=-1", "model.lora_r must be >= 0, got -1"),
    ("model.sample_fps=0", "model.sample_fps must be > 0, got 0.0"),
    ("model.tiny.layers=0", "model.tiny.layers must be >= 1, got 0"),
    ("model.tiny.kv_heads=3", "model.tiny.kv_heads (3) must divide heads (4)"),
    ("model.prompt.instruction='{promt}'",
     "model.prompt.instruction: only {prompt} and {reward_token} may be filled in (KeyError: 'promt')"),
    ("output_dir=''", "output_dir: required (where checkpoints, samples and metrics.json go)"),
])
def test_counts_and_rates_fail_naming_the_override_and_field(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(RewardConfig, SYNTHETIC, [override])
    assert str(caught.value) == f"override {override}: {message}"


def test_a_zero_log_interval_never_reaches_the_trainer(capsys):
    assert train_reward.main(["--config", str(SYNTHETIC), "train.log_every=0"]) == 2
    assert capsys.readouterr().err == "config error: override train.log_every=0: train.log_every must be >= 1, got 0\n"


@pytest.mark.parametrize("override", ["train.lr=nan", "train.ties_k=inf", "pretrain.lr=-inf", "model.sample_fps=.nan"])
def test_non_finite_numbers_are_rejected(override):
    field = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^override {override}: field '{field}' must be a finite number"):
        load_config(RewardConfig, SYNTHETIC, [override])


def test_files_are_checked_by_validate_inputs_not_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of the paths below exist here: the configs still load
    cfg = load_config(RewardConfig, SYNTHETIC, ["data.train_manifest=pairs/train.jsonl"])
    with pytest.raises(ConfigError, match=r"^data\.train_manifest: file not found: pairs/train\.jsonl$"):
        cfg.validate_inputs()
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.jsonl").write_text("")
    cfg.validate_inputs()
    qwen = load_config(RewardConfig, ROOT / "configs/reward/qwen2_5_vl_3b.yaml")
    qwen.validate_inputs()  # a hub id is not a path
    local = load_config(RewardConfig, ROOT / "configs/reward/qwen2_5_vl_3b.yaml", ["model.backbone=./models/qwen"])
    with pytest.raises(ConfigError, match=r"^model\.backbone: folder not found: \./models/qwen$"):
        local.validate_inputs()


def test_label_column_picks_the_videoalign_preference(tmp_path):
    with open(tmp_path / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path_A", "path_B", "prompt", "VQ", "TA"])
        writer.writerows([["a1.mp4", "b1.mp4", "a cat", "A", "same"], ["a2.mp4", "b2.mp4", "a dog", "B", "A"]])
    manifest = f"data.train_manifest={tmp_path / 'train.csv'}"
    cfg = load_config(RewardConfig, SYNTHETIC, [manifest, "data.check_files=false", "data.label_column=TA"])
    assert [row["label"] for row in load_splits(cfg.data, accelerator=None)["train"]] == ["tie", "a"]
    cfg = load_config(RewardConfig, SYNTHETIC, [manifest, "data.check_files=false"])
    with pytest.raises(ConfigError, match=r"train\.csv: several preference columns \['VQ', 'TA'\]"):
        load_splits(cfg.data, accelerator=None)
    with pytest.raises(ConfigError) as caught:
        load_config(RewardConfig, SYNTHETIC, ["data.label_column=TA"])
    assert str(caught.value) == ("override data.label_column=TA: data.label_column ('TA') picks a column of a CSV "
                                 "manifest; none of data.train_manifest / val_manifest / test_manifest is a .csv")


def test_sharding_takes_fsdp_or_none_as_stage_2_does():
    assert load_config(RewardConfig, None, ["train.sharding=fsdp"]).train.sharding == "fsdp"
    assert load_config(RewardConfig, ROOT / "configs/reward/qwen2_5_vl_3b.yaml").train.sharding == "none"
    with pytest.raises(ConfigError, match="train.sharding"):
        load_config(RewardConfig, None, ["train.sharding=zero3"])
