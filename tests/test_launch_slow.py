"""The entry script under real launchers: 2 CPU processes (gloo) and DeepSpeed ZeRO-2.

Slow (process start-up, DeepSpeed compiles a small op on first use): run with `pytest -m slow`.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests_support import TINY_REWARD_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def run(args: list[str], tmp_path: Path) -> dict:
    overrides = [*TINY_REWARD_OVERRIDES, f"output_dir={tmp_path / 'run'}", f"data.synthetic.out_dir={tmp_path / 'pairs'}"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    subprocess.run([ACCELERATE, "launch", *args, "train_reward.py", "--config", "configs/reward/synthetic.yaml", *overrides],
                   cwd=ROOT, env=env, check=True, timeout=900)
    return json.loads((tmp_path / "run" / "metrics.json").read_text())


@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    metrics = run(["--multi_gpu", "--num_processes", "2"], tmp_path)
    assert metrics["num_test_pairs"] == 6
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000002" / "state.json").read_text())
    assert state["step"] == 2


@pytest.mark.slow
def test_deepspeed_zero2_single_process(tmp_path):
    metrics = run(["--use_deepspeed", "--deepspeed_config_file", "launch/deepspeed/zero2.json",
                   "--num_processes", "1"], tmp_path)
    assert metrics["num_test_pairs"] == 6
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_deepspeed_zero2_state_resumes(tmp_path):
    """The engine's own checkpoint files pass the weights_only check and DeepSpeed loads them: a rerun
    with more steps continues from step 2 (each step logged once) instead of starting over."""
    args = ["--use_deepspeed", "--deepspeed_config_file", "launch/deepspeed/zero2.json", "--num_processes", "1"]
    run(args, tmp_path)
    overrides = [*TINY_REWARD_OVERRIDES, f"output_dir={tmp_path / 'run'}", f"data.synthetic.out_dir={tmp_path / 'pairs'}",
                 "train.max_steps=3"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([ACCELERATE, "launch", *args, "train_reward.py", "--config", "configs/reward/synthetic.yaml",
                           *overrides], cwd=ROOT, env=env, check=True, timeout=900, capture_output=True, text=True)
    assert "resumed from" in done.stdout + done.stderr
    engine = tmp_path / "run" / "checkpoints" / "step_00000003" / "engine" / "engine"
    assert sorted(p.name for p in engine.glob("*.pt"))  # DeepSpeed's files, checked before they load
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "train/loss" in e] == [1, 2, 3]


@pytest.mark.slow
def test_fsdp_under_a_deepspeed_launch_is_refused_in_one_line(tmp_path):
    """Two engines would shard the same model: train.sharding=fsdp under DeepSpeed stops before a model loads."""
    overrides = [*TINY_REWARD_OVERRIDES, f"output_dir={tmp_path / 'run'}", f"data.synthetic.out_dir={tmp_path / 'pairs'}",
                 "train.sharding=fsdp"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([ACCELERATE, "launch", "--use_deepspeed", "--deepspeed_config_file", "launch/deepspeed/zero2.json",
                           "--num_processes", "1", "train_reward.py", "--config", "configs/reward/synthetic.yaml",
                           *overrides], cwd=ROOT, env=env, timeout=900, capture_output=True, text=True)
    assert done.returncode != 0
    assert "train.sharding: fsdp and a DeepSpeed launch both shard the model" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
