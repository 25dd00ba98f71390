"""The memory planner on the published recipes: every one fits on 8 x 80 GB with the launch flags the
README gives it, and a setting that obviously does not fit is refused with one line naming its lever."""
from pathlib import Path

import pytest
import yaml

from identity_grpo.ipro.decoder_frames import graded_frames
from identity_grpo.plan.__main__ import main
from identity_grpo.plan.activations import load_coefficients
from identity_grpo.plan.ipro import decoder_grad_span
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


def item(plan, prefix: str, phase: str | None = None):
    items = plan.resident if phase is None else next(p for p in plan.phases if p.name == phase).items
    return next(i for i in items if i.name.startswith(prefix))


def test_an_offloaded_text_encoder_costs_nothing_on_the_gpu():
    def encoder_bytes(offload: str) -> float:
        return item(make_plan(ROOT / VACE, [f"generator.offload_text_encoder={offload}"], Launch()), "text encoder").bytes

    assert encoder_bytes("true") == 0 and round(encoder_bytes("false") / 1e9, 1) == 11.4  # 5.68B x 2 bytes


def test_an_offloaded_reward_model_is_counted_only_while_scoring(tmp_path):
    raw = yaml.safe_load((ROOT / VACE).read_text())
    raw["rewards"][0].setdefault("options", {})["offload"] = True
    (tmp_path / "offloaded.yaml").write_text(yaml.safe_dump(raw))
    kept = make_plan(ROOT / VACE, [], Launch())
    offloaded = make_plan(tmp_path / "offloaded.yaml", [], Launch())
    weights = item(kept, "reward model rewards[0]").bytes
    assert round(weights / 1e9, 2) == 7.75 and item(offloaded, "reward model rewards[0]").bytes == 0
    assert item(offloaded, "rewards[0] reward model brought in", "scoring").bytes == weights
    for phase in ("sampling", "update", "decoding"):  # the phases that do not score gain its bytes
        assert offloaded.resident_total + next(p for p in offloaded.phases if p.name == phase).total == \
            pytest.approx(kept.resident_total - weights + next(p for p in kept.phases if p.name == phase).total)


def test_tiled_decoding_is_one_clip_and_one_tile_at_a_time():
    coef = load_coefficients()["vae"]["nograd_peak_fp32"]
    tiled = item(make_plan(ROOT / VACE, ["generator.vae_tiling=true"], Launch()), "VAE no-grad decode", "eval decoding")
    plain = item(make_plan(ROOT / VACE, [], Launch()), "VAE no-grad decode", "eval decoding")
    # 1 clip of 81 frames at 480x832: 256-pixel tiles every 192 cover rows 256 + 256 + 96 = 608 and
    # columns 4 x 256 + 64 = 1088; the working set is one 256 x 256 tile's.
    by_hand = coef["per_pixel_frame"] * 81 * (480 * 832 + 608 * 1088) + coef["per_pixel"] * 256 * 256 + coef["constant"]
    assert tiled.bytes == pytest.approx(by_hand) and tiled.bytes < plain.bytes / 2


def test_the_decoder_frames_are_the_trainers_draw_and_priced_per_chunk():
    for k in (1, 4, 5, 9):  # the planner's span is the shape of what the trainer draws
        chunks, frames = decoder_grad_span(81, k)
        drawn = graded_frames(0, 0, 0, 0, 8, 81, k)
        assert drawn.shape == (8, frames) and chunks == -(-k // 4)
    assert decoder_grad_span(81, 0) == decoder_grad_span(81, 81) == (21, 81)
    coef = load_coefficients()
    one, two = (make_plan(ROOT / I2V_21, [f"train.decoder_grad_frames={k}"], Launch(sequence_parallel=4)) for k in (4, 8))
    decoder = [item(p, "VAE decode with gradients", "update").bytes for p in (one, two)]
    cache = coef["vae_cache"]["cache_bf16"]  # a second chunk adds its kept causal context, nothing else
    assert decoder[1] - decoder[0] == pytest.approx(cache["per_pixel"] * 480 * 832 + cache["constant"])
    assert item(two, "ArcFace", "update").bytes == 2 * item(one, "ArcFace", "update").bytes  # 24 vs 12 crops


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
