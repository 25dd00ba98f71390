"""Stage 1 under FSDP2 (train.sharding: fsdp, reward_model/recipe.py) on 2 CPU processes (gloo):
an optimizer step on 2 + 2 pairs equals one process's step on the same 4 pairs (averaged gradients,
updated weights, logged loss and gradient norm to float32 tolerance), and a sharded run killed after a checkpoint and
started again ends with the weights of one that never stopped."""
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from identity_grpo.core.state_files import load_tree
from tests_support import PROCESS_ENV, kill_when_saved, torchrun

DRIVER = Path(__file__).resolve().parents[1] / "recipes" / "resume_driver.py"
SAME_PAIRS = ["model.lora_dropout=0.0", "train.max_steps=1"]  # no dropout: processes draw their own masks


def logged(out: Path) -> dict:
    return next(json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "train/loss" in json.loads(line))


def weights(out: Path) -> dict:
    return load_file(str(out / "final" / "model.safetensors"))


def gradients(one: Path, two: Path) -> tuple[dict, dict]:
    """The clipped gradients of the first step, by parameter name: AdamW's first moment is 0.1 x
    the gradient (the sharded run's checkpoint names the parameters, the unsharded one numbers them
    in the same order)."""
    a, b = (load_tree(out / "checkpoints" / "step_00000001" / "optimizer") for out in (one, two))
    names = b["param_groups"][0]["params"]
    return ({names[i]: 10 * s["exp_avg"] for i, s in a["state"].items()},
            {name: 10 * s["exp_avg"] for name, s in b["state"].items()})


@pytest.mark.slow
def test_two_sharded_processes_equal_one_with_the_doubled_batch(tmp_path):
    pairs = tmp_path / "pairs"
    subprocess.run(torchrun(1, 29421, DRIVER, "reward", pairs, tmp_path / "one", *SAME_PAIRS, "train.batch_size=4"),
                   env=PROCESS_ENV, check=True, timeout=600, capture_output=True)
    subprocess.run(torchrun(2, 29422, DRIVER, "reward", pairs, tmp_path / "two", *SAME_PAIRS, "train.batch_size=2",
                            "train.sharding=fsdp"), env=PROCESS_ENV, check=True, timeout=600, capture_output=True)
    grads_one, grads_two = gradients(tmp_path / "one", tmp_path / "two")
    assert set(grads_one) == set(grads_two) and len(grads_one) > 10
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_two[name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()), msg=name)
    # AdamW's first step moves each weight by lr x g / (|g| + 1e-8): where |g| is not far above that
    # epsilon a float32 rounding of g moves the weight visibly, so the weights are compared elsewhere.
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert set(one) == set(two)
    for name, value in one.items():
        grad = grads_one.get(name)
        sure = torch.ones_like(value, dtype=torch.bool) if grad is None else (grad.abs() > 1e-6) & (grad.abs() > 1e-4 * grad.abs().max())
        torch.testing.assert_close(two[name][sure], value[sure], rtol=1e-5, atol=1e-6, msg=name)
    log_one, log_two = logged(tmp_path / "one"), logged(tmp_path / "two")
    for key in ("train/loss", "train/grad_norm", "train/accuracy"):
        if key in log_one:
            assert log_two[key] == pytest.approx(log_one[key], rel=1e-5), key
    assert log_one["train/grad_norm"] > 0


@pytest.mark.slow
def test_sharded_run_resumes_exactly(tmp_path):
    pairs = tmp_path / "pairs"

    def command(out, port):
        return torchrun(2, port, DRIVER, "reward", pairs, out, "train.sharding=fsdp", "train.max_steps=4")

    subprocess.run(command(tmp_path / "straight", 29431), env=PROCESS_ENV, check=True, timeout=600, capture_output=True)
    kill_when_saved(command(tmp_path / "killed", 29432), tmp_path / "killed" / "checkpoints" / "step_00000002")
    subprocess.run(command(tmp_path / "killed", 29433), env=PROCESS_ENV, check=True, timeout=600, capture_output=True)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert set(straight) == set(resumed)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics["status"] == "ok"
