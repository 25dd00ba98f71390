"""The benchmark runs real (tiny) iterations and prints its table and JSON; no figure is checked
for speed (timings belong in the benchmark's output, not in tests), only that every phase was
timed, the shares add up, and each fast path computes what its plain path does."""
import json
from pathlib import Path

import pytest

from identity_grpo.bench.__main__ import main
from identity_grpo.bench.run import PHASES, run_benchmark
from identity_grpo.bench.table import render
from identity_grpo.core.config_io import load_config
from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.ipro.config import IproConfig
from identity_grpo.rewards.registry import register_reward
from tests_support import slot_face_reward, write_prompt_manifests

ROOT = Path(__file__).resolve().parents[2]


@register_reward("bench_brightness")
def build_brightness(spec, device):
    return lambda videos, refs, prompts: videos[..., 0].mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_prompt_manifests(tmp_path_factory.mktemp("prompts"))


def tiny_config(data, *overrides) -> GrpoConfig:
    return load_config(GrpoConfig, None, [
        "generator.kind=vace", "generator.pretrained=tiny", "generator.dtype=float32",
        "generator.vace.height=32", "generator.vace.width=32", "generator.vace.num_frames=5",
        "generator.vace.max_sequence_length=16", "generator.vace.guidance_scale=3.0",
        "sampling.train_steps=3", "rewards=[{name: bench_brightness, weight: 1.0}]",
        f"data.train_manifest={data / 'train.jsonl'}", "lora.r=4", "lora.alpha=8",
        "train.group_size=2", "train.prompts_per_step=2", "train.sample_batch_size=4", "train.train_batch_size=2",
        "wandb.mode=disabled", *overrides,
    ])


def test_one_tiny_iteration_times_every_phase_and_compares_the_fast_paths(data):
    result = run_benchmark(tiny_config(data), "grpo", iterations=1, mfu=True, log=lambda line: None)
    assert set(result["phase_seconds"]) == set(PHASES)
    for name in ("encode_conditions", "sample_forward", "vae_decode", "reward", "logprob_recompute", "backward",
                 "optimizer"):
        assert result["phase_seconds"][name] > 0, name
    shares = sum(result["phase_shares"].values()) + result["overhead_share"]
    assert shares == pytest.approx(1.0, abs=1e-6)
    assert result["samples_per_iteration"] == 4 and result["peak_memory_gb"] > 0
    paths = result["fast_paths"]
    # One forward per sample and guidance branch computes the same sample (up to float rounding).
    b = paths["batched_forwards"]
    assert b["forwards_per_step_one_at_a_time"] == 2 * b["samples"] and b["forwards_per_step_batched"] == 1
    assert paths["batched_forwards"]["max_abs_latent_difference"] < 1e-4
    assert result["batched_speedup"] == paths["batched_forwards"]["speedup"] > 0
    # 4 samples of 2 prompts: the cache encodes 2, and gives the same conditions.
    assert paths["condition_cache"]["prompts"] == 2 and paths["condition_cache"]["max_abs_difference"] < 1e-4
    assert paths["overlap_rewards"]["max_abs_reward_difference"] == 0.0  # same rollouts, same scores
    assert paths["cfg_free_training"]["speedup"] > 0
    assert result["mfu"]["training_fwd_bwd"] > 0 and result["mfu"]["sampling"] > 0
    table = render(result)
    for label in ("generator forwards while sampling", "VAE decoding", "reward scoring", "log-prob recomputation",
                  "backward", "optimizer", "overhead", "samples / second", "peak memory", "batched group sampling"):
        assert label in table, label


def test_one_tiny_ipro_iteration_times_its_phases_and_batches_its_forwards(data):
    cfg = load_config(IproConfig, None, [
        "generator.kind=vace", "generator.pretrained=tiny", "generator.dtype=float32",
        "generator.vace.height=32", "generator.vace.width=32", "generator.vace.num_frames=5",
        "generator.vace.max_sequence_length=16", "generator.vace.guidance_scale=3.0", "sampling.train_steps=3",
        f"data.train_manifest={data / 'train.jsonl'}", "lora.r=4", "lora.alpha=8", "train.batch_size=4",
        "train.micro_batch_size=2", "train.last_steps=2", "wandb.mode=disabled",
    ])
    result = run_benchmark(cfg, "ipro", iterations=1, face_reward=slot_face_reward(), log=lambda line: None)
    for name in ("encode_conditions", "sample_forward", "vae_decode", "reward", "backward", "optimizer"):
        assert result["phase_seconds"][name] > 0, name
    assert result["phase_seconds"]["logprob_recompute"] == 0  # IPRO has no second pass: it backpropagates the sampling
    assert sum(result["phase_shares"].values()) + result["overhead_share"] == pytest.approx(1.0, abs=1e-6)
    assert result["samples_per_iteration"] == 4
    assert result["fast_paths"]["batched_forwards"]["max_abs_latent_difference"] < 1e-4
    assert "generator forwards while sampling" in render(result)


def test_cli_prints_the_table_and_writes_the_json_keys(data, tmp_path, capsys):
    config = tmp_path / "bench.yaml"
    config.write_text("generator: {kind: vace, pretrained: tiny, dtype: float32,\n"
                      "  vace: {height: 32, width: 32, num_frames: 5, max_sequence_length: 16}}\n")
    out = tmp_path / "out" / "bench.json"
    code = main(["--config", str(config), "--iterations", "1", "--json", str(out), "--no-compare",
                 "sampling.train_steps=2", "rewards=[{name: bench_brightness, weight: 1.0}]",
                 f"data.train_manifest={data / 'train.jsonl'}", "train.group_size=2", "train.prompts_per_step=2",
                 "train.sample_batch_size=4", "train.train_batch_size=4", "speed.condition_cache=8"])
    assert code == 0
    assert "overhead (everything else)" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    for key in ("overhead_share", "batched_speedup", "phase_seconds", "samples_per_second", "peak_memory_gb",
                "iteration_seconds", "command"):
        assert key in saved, key
    assert saved["speed"]["condition_cache"] == 8


def test_published_shape_config_runs_at_tiny_sizes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the synthetic world writes its prompts under data/
    code = main(["--config", str(ROOT / "configs/bench/grpo_vace_1.3b_random.yaml"), "--random-weights", "--tiny",
                 "--iterations", "1", "--no-compare", "sampling.train_steps=2", "train.group_size=2",
                 "train.prompts_per_step=2", "train.sample_batch_size=2", "train.train_batch_size=2",
                 "train.timestep_fraction=0.5", 'train.mixed_precision="no"', "generator.dtype=float32",
                 "generator.vace.max_sequence_length=16", "data.world.num_train=4"])
    assert code == 0
    assert "generator forwards while sampling" in capsys.readouterr().out


def test_bad_arguments_are_refused_before_models_load(tmp_path, capsys):
    assert main(["--config", str(ROOT / "configs/grpo/synthetic_vace.yaml"), "--tiny"]) == 2
    assert "--tiny" in capsys.readouterr().err
