"""Exact resume: a training process killed with SIGKILL mid-run and started again with the same
command ends with the same weights and metrics.json as a run that never stopped (bitwise: the CPU
runs are deterministic), for stage 1, GRPO and IPRO; its log has each step once."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests_support import write_prompt_manifests

DRIVER = Path(__file__).with_name("resume_driver.py")
DIFFERENT_BY_NATURE = {"train_seconds", "checkpoint"}  # wall-clock time, the run folder's path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return write_prompt_manifests(tmp_path_factory.mktemp("prompts"))


def command(kind: str, data: Path, out: Path) -> list[str]:
    return [sys.executable, str(DRIVER), kind, str(data), str(out)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout, whatever the venv points at


def run_to_end(kind, data, out):
    subprocess.run(command(kind, data, out), env=ENV, check=True, timeout=600, capture_output=True)


def run_and_kill(kind, data, out, after_step: int):
    """Start the run, SIGKILL it as soon as the checkpoint of `after_step` is complete."""
    process = subprocess.Popen(command(kind, data, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / f"step_{after_step:08d}"
    deadline = time.monotonic() + 600
    while not target.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists()


def weights(out: Path, kind: str) -> dict:
    final = out / "final"
    file = final / ("model.safetensors" if kind == "reward" else "pytorch_lora_weights.safetensors")
    return load_file(str(file))


def metrics(out: Path) -> dict:
    return {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k not in DIFFERENT_BY_NATURE}


@pytest.mark.parametrize("kind, kill_after", [("reward", 2), ("grpo", 2), ("ipro", 2)])
def test_killed_and_rerun_equals_uninterrupted(prompts, tmp_path, kind, kill_after):
    data = tmp_path / "pairs" if kind == "reward" else prompts
    run_to_end(kind, data, tmp_path / "straight")
    run_and_kill(kind, data, tmp_path / "killed", kill_after)
    run_to_end(kind, data, tmp_path / "killed")

    straight, resumed = weights(tmp_path / "straight", kind), weights(tmp_path / "killed", kind)
    assert set(straight) == set(resumed)
    for name, value in straight.items():
        assert value.equal(resumed[name]), f"{name} differs after the resume"
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "straight")
    log = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    key = "train/loss" if kind != "grpo" else "train/policy_loss"
    assert [entry["step"] for entry in log if key in entry] == sorted({entry["step"] for entry in log if key in entry})
