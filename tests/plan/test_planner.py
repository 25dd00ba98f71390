"""The memory planner on the published recipes: every one fits on 8 x 80 GB with the launch flags the
README gives it, and a setting that obviously does not fit is refused with one line naming its lever."""
from pathlib import Path

import pytest

from identity_grpo.plan.__main__ import main
from identity_grpo.plan.planner import Launch, PlanError, detect_recipe, make_plan

ROOT = Path(__file__).resolve().parents[2]
VACE, PHANTOM = "configs/grpo/vace_1.3b.yaml", "configs/grpo/phantom_1.3b.yaml"
I2V_21, I2V_22 = "configs/ipro/wan2.1_i2v_14b.yaml", "configs/ipro/wan2.2_i2v_a14b.yaml"
REWARD = "configs/reward/qwen2_5_vl_3b.yaml"
# Launch flags of each recipe (README, "Memory planner"): none; the 14B IPRO recipes' sequence
# parallelism (train.sequence_parallel: 4) is read from their configs.
PUBLISHED = {VACE: [], PHANTOM: [], I2V_21: [], I2V_22: [], REWARD: []}


def plan(config: str, *args: str) -> tuple[int, str, str]:
    return main(["--config", str(ROOT / config), "--gpus", "8", "--gpu-memory", "80", *args])


@pytest.mark.parametrize("config", sorted(PUBLISHED))
def test_every_published_recipe_fits_on_8_gpus_of_80_gb(config, capsys):
    assert plan(config, *PUBLISHED[config]) == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "estimate (CPU-measured coefficients)" in table and "not yet confirmed on a GPU" in table
    assert "fits" in table and "DOES NOT FIT" not in table


@pytest.mark.parametrize("config, args, lever", [
    (VACE, ["train.gradient_checkpointing=false"], "lever: train.gradient_checkpointing"),
    (PHANTOM, ["train.gradient_checkpointing=false"], "lever: train.gradient_checkpointing"),
    (VACE, ["train.train_batch_size=64"], "lever: train.train_batch_size"),
    (I2V_22, ["train.sequence_parallel=1"], "lever: train.sequence_parallel (--sequence-parallel)"),
    (I2V_22, ["--sequence-parallel", "1"], "lever: train.sequence_parallel (--sequence-parallel)"),
    (I2V_22, ["train.decoder_grad_frames=0"], "lever: ipro decoder frames"),
    (I2V_21, ["train.gradient_checkpointing=false"], "lever: train.gradient_checkpointing"),
    (I2V_22, ["--sequence-parallel", "8", "--shard", "none"], "lever: generator shards (FSDP)"),
    (REWARD, ["model.gradient_checkpointing=false", "train.batch_size=8"], "lever: model.gradient_checkpointing"),
    (REWARD, ["train.batch_size=64"], "lever: train.batch_size"),
])
def test_too_large_settings_are_refused_naming_the_lever(config, args, lever, capsys):
    assert plan(config, *args) == 1
    refusal = capsys.readouterr().err.strip()
    assert len(refusal.splitlines()) == 1 and lever in refusal and "does not fit" in refusal


def test_the_table_names_every_component_and_phase():
    table = "\n".join(f"{i.name} {i.bytes}" for i in make_plan(ROOT / I2V_21, [], Launch()).resident)
    for part in ("transformer Wan2.1-I2V-14B", "text encoder UMT5-XXL", "image encoder CLIP", "VAE", "ArcFace",
                 "reward model eval_rewards[0]", "LoRA r32"):
        assert part in table
    phases = [p.name for p in make_plan(ROOT / VACE, [], Launch()).phases]
    assert phases == ["sampling", "update", "decoding", "scoring", "eval sampling", "eval decoding"]


def test_offloaded_encoders_cost_nothing_on_the_gpu_unless_kept_there():
    def encoder_bytes(where: str) -> float:
        resident = make_plan(ROOT / VACE, [], Launch(encoders=where)).resident
        return next(i.bytes for i in resident if i.name.startswith("text encoder"))

    assert encoder_bytes("cpu") == 0 and round(encoder_bytes("gpu") / 1e9, 1) == 11.4


def test_recipes_are_told_apart_and_unknown_models_refused(capsys):
    assert [detect_recipe({"model": {}}), detect_recipe({"face_reward": {}}), detect_recipe({"generator": {}})] == [
        "reward", "ipro", "grpo"]
    with pytest.raises(PlanError, match="published checkpoints"):
        make_plan(ROOT / "configs/grpo/synthetic_vace.yaml", [], Launch())
    assert plan(I2V_22, "--sequence-parallel", "3") == 2
    assert "must divide --gpus" in capsys.readouterr().err


def test_sequence_parallelism_comes_from_the_config_unless_the_flag_says():
    def split(*args: str) -> int:
        return make_plan(ROOT / I2V_21, list(args), Launch()).launch.sequence_parallel

    assert split() == 4 and split("train.sequence_parallel=2") == 2
    assert make_plan(ROOT / I2V_21, [], Launch(sequence_parallel=8)).launch.sequence_parallel == 8
    assert make_plan(ROOT / VACE, [], Launch()).launch.sequence_parallel == 1  # GRPO has none
    with pytest.raises(PlanError, match="must divide --gpus 6"):
        make_plan(ROOT / I2V_21, [], Launch(gpus=6))
