"""The batch arithmetic each trainer prints at start, and scaling the published recipes from 8 to 64
GPUs: validation names the overrides that fix a launch, and those overrides pass."""
import re
from pathlib import Path

import pytest

from identity_grpo.core.config_io import ConfigError, load_config
from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.ipro.config import IproConfig
from reward_model.config import RewardConfig

ROOT = Path(__file__).resolve().parents[2]
GRPO = ["configs/grpo/vace_1.3b.yaml", "configs/grpo/phantom_1.3b.yaml"]
IPRO = ["configs/ipro/wan2.1_i2v_14b.yaml", "configs/ipro/wan2.2_i2v_a14b.yaml"]
SCALE_GRPO_TO_64 = ["train.sample_batch_size=2"]  # the README's recipe: the same 128 samples per step


def grpo(path: str, *overrides: str) -> GrpoConfig:
    return load_config(GrpoConfig, ROOT / path, list(overrides))


def ipro(path: str, *overrides: str) -> IproConfig:
    return load_config(IproConfig, ROOT / path, list(overrides))


def suggested(message: str) -> list[list[str]]:
    """The override sets an error names: 'use A=1 B=2 (why), or C=3 (why)' -> [[A=1, B=2], [C=3]]."""
    fixes = re.split(r" process(?:es)? use ", message, maxsplit=1)[1].split(", or ")
    return [re.findall(r"train\.\w+=\d+", fix) for fix in fixes]


def test_grpo_arithmetic_of_the_published_recipe():
    assert grpo(GRPO[0]).batch_arithmetic(8) == (
        "batch: train.prompts_per_step=16 x train.group_size=8 = 128 samples per step; / 8 processes = 16 per process; "
        "/ train.sample_batch_size=4 = 4 sampling forwards per process; train.inner_epochs=1 x "
        "train.updates_per_epoch=2 = 2 updates per step, each on 8 samples per process in micro-batches of at most "
        "train.train_batch_size=4")
    assert grpo(GRPO[0], *SCALE_GRPO_TO_64).batch_arithmetic(64) == (
        "batch: train.prompts_per_step=16 x train.group_size=8 = 128 samples per step; / 64 processes = 2 per process; "
        "/ train.sample_batch_size=2 = 1 sampling forwards per process; train.inner_epochs=1 x "
        "train.updates_per_epoch=2 = 2 updates per step, each on 1 samples per process in micro-batches of at most "
        "train.train_batch_size=4")
    # updates over a count they do not divide: near-equal chunks (identity_grpo/grpo/update.py)
    assert "each on 2-3 samples per process" in grpo(GRPO[0], "train.updates_per_epoch=3").batch_arithmetic(16)


def test_ipro_and_stage_1_arithmetic():
    assert ipro(IPRO[0]).batch_arithmetic(8) == (
        "batch: train.batch_size=64 = 2 groups of train.sequence_parallel=4 processes x train.micro_batch_size=1 x 32 "
        "accumulated forwards (samples per optimizer step)")
    assert ipro(IPRO[0], "train.sequence_parallel=1").batch_arithmetic(8) == (
        "batch: train.batch_size=64 = 8 processes x train.micro_batch_size=1 x 8 accumulated forwards "
        "(samples per optimizer step)")
    reward = load_config(RewardConfig, ROOT / "configs/reward/qwen2_5_vl_3b.yaml")
    assert reward.batch_arithmetic(8) == ("batch: train.batch_size=2 x train.grad_accum_steps=8 x 8 processes = "
                                          "128 pairs per optimizer step")
    scaled = load_config(RewardConfig, ROOT / "configs/reward/qwen2_5_vl_3b.yaml", ["train.grad_accum_steps=1"])
    assert scaled.batch_arithmetic(64).endswith("= 128 pairs per optimizer step")  # the README's 64-GPU recipe


@pytest.mark.parametrize("path", GRPO)
def test_grpo_recipe_scales_from_8_to_64_gpus(path):
    cfg = grpo(path)
    cfg.validate_processes(8)
    with pytest.raises(ConfigError) as refused:
        cfg.validate_processes(64)
    assert str(refused.value) == (
        "train.prompts_per_step * train.group_size (= 128) must be divisible by train.sample_batch_size * "
        "num_processes (= 4 * 64); on 64 processes use train.sample_batch_size=2 (the same 128 samples per step, "
        "2 per process), or train.prompts_per_step=32 (256 samples per step)")
    grpo(path, *SCALE_GRPO_TO_64).validate_processes(64)
    grpo(path, "train.prompts_per_step=32").validate_processes(64)


@pytest.mark.parametrize("path", IPRO)
def test_ipro_recipe_runs_on_8_and_64_gpus_and_names_the_fix_beyond(path):
    cfg = ipro(path)  # each sample split over 4 GPUs (train.sequence_parallel)
    cfg.validate_processes(8)
    cfg.validate_processes(64)
    cfg.validate_processes(256)  # batch 64 = 64 groups of 4 x 1 x 1: no accumulation left
    assert "x 1 accumulated forwards" in cfg.batch_arithmetic(256)
    with pytest.raises(ConfigError, match=r"\(= 1 \* 128\); on 512 processes use train\.batch_size=128$"):
        cfg.validate_processes(512)
    with pytest.raises(ConfigError, match=r"on 6 processes use train\.sequence_parallel=2 train\.batch_size=66 "):
        cfg.validate_processes(6)


def test_ipro_names_a_smaller_micro_batch_when_it_keeps_the_batch():
    with pytest.raises(ConfigError) as refused:
        ipro(IPRO[0], "train.micro_batch_size=4", "train.sequence_parallel=1").validate_processes(32)
    assert str(refused.value).endswith("on 32 processes use train.micro_batch_size=2 (the same batch of 64, 2 per "
                                       "process), or train.batch_size=128")
    with pytest.raises(ConfigError) as refused:  # 128 GPUs = 32 groups of 4
        ipro(IPRO[0], "train.micro_batch_size=4").validate_processes(128)
    assert str(refused.value).endswith("on 128 processes use train.micro_batch_size=2 (the same batch of 64, 2 per "
                                       "group), or train.batch_size=128")


def test_updates_beyond_the_samples_per_process_name_the_fix():
    with pytest.raises(ConfigError) as refused:
        grpo(GRPO[0], "train.sample_batch_size=1", "train.updates_per_epoch=4").validate_processes(64)
    assert str(refused.value) == (
        "train.updates_per_epoch (4) exceeds the samples per process (2); on 64 processes use "
        "train.updates_per_epoch=2 (the same 128 samples per step, 2 per process), "
        "or train.prompts_per_step=32 (256 samples per step)")
    with pytest.raises(ConfigError) as refused:  # both sampling batch and updates must shrink
        grpo(GRPO[0]).validate_processes(128)
    assert str(refused.value).endswith("on 128 processes use train.sample_batch_size=1 train.updates_per_epoch=1 (the "
                                       "same 128 samples per step, 1 per process), or train.prompts_per_step=64 (512 "
                                       "samples per step)")


@pytest.mark.parametrize("processes", [2, 3, 6, 12, 16, 24, 32, 48, 64, 96, 128, 256])
def test_every_named_fix_passes(processes):
    """Whatever the launch, each override set the error names makes validation pass."""
    cases = [(grpo, GRPO[0], ()), (grpo, GRPO[0], ("train.updates_per_epoch=5",)), (ipro, IPRO[0], ()),
             (ipro, IPRO[0], ("train.micro_batch_size=4",))]
    for load, path, base in cases:
        try:
            load(path, *base).validate_processes(processes)
            continue
        except ConfigError as error:
            fixes = suggested(str(error))
        assert fixes and all(fixes)
        for fix in fixes:
            load(path, *base, *fix).validate_processes(processes)


def test_a_file_that_cannot_split_on_one_process_names_its_fix_as_it_loads():
    with pytest.raises(ConfigError) as refused:
        grpo(GRPO[0], "train.prompts_per_step=3", "train.group_size=3")
    assert str(refused.value).endswith("on 1 process use train.sample_batch_size=3 (the same 9 samples per step, 9 per "
                                       "process), or train.prompts_per_step=4 (12 samples per step)")
    for fix in suggested(str(refused.value)):
        grpo(GRPO[0], "train.prompts_per_step=3", "train.group_size=3", *fix)
