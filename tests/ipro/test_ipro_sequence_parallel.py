"""IPRO with train.sequence_parallel: 2 (generators/sequence_parallel.py) on 2 CPU processes (gloo),
the Wan2.1-style tiny I2V generator's transformer split over both and FSDP2-sharded: one group of
2 processes runs the samples, noise and held-out prompts of a 1-process run, so the trained LoRA,
the logged values and the evaluation equal that run's to float32 tolerance."""
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests_support import PROCESS_ENV, torchrun, write_prompt_manifests

DRIVER = Path(__file__).resolve().parents[1] / "recipes" / "resume_driver.py"
I2V = ["generator.kind=i2v", "generator.i2v.height=32", "generator.i2v.width=32", "generator.i2v.num_frames=5",
       "generator.i2v.max_sequence_length=16", "generator.i2v.guidance_scale=3.0", "train.num_steps=2",
       "train.save_every=0", "train.eval_every=0"]  # 2 latent frames x 2 x 2 = 8 tokens per sample


def run(processes: int, port: int, prompts: Path, out: Path, *overrides: str) -> None:
    subprocess.run(torchrun(processes, port, DRIVER, "ipro", prompts, out, *I2V, *overrides), env=PROCESS_ENV,
                   check=True, timeout=600, capture_output=True)


@pytest.mark.slow
def test_a_split_and_sharded_group_of_two_equals_one_process(tmp_path):
    (tmp_path / "prompts").mkdir()
    prompts = write_prompt_manifests(tmp_path / "prompts")
    run(1, 29461, prompts, tmp_path / "one")
    run(2, 29462, prompts, tmp_path / "two", "train.sequence_parallel=2", "train.sharding=fsdp")
    one, two = (load_file(str(tmp_path / o / "final" / "pytorch_lora_weights.safetensors")) for o in ("one", "two"))
    assert set(one) == set(two) and len(one) > 10
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)
    logs = [[json.loads(line) for line in (tmp_path / o / "log.jsonl").read_text().splitlines()] for o in ("one", "two")]
    trained = [[e for e in log if "train/loss" in e] for log in logs]
    assert len(trained[0]) == len(trained[1]) == 2
    for a, b in zip(*trained):
        for key in ("train/reward", "train/kl", "train/loss", "train/grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key
    after = [json.loads((tmp_path / o / "metrics.json").read_text())["eval_after"] for o in ("one", "two")]
    assert after[1] == pytest.approx(after[0], rel=1e-5)
