"""launch/multi_node.sh and launch/slurm.sbatch under DRY_RUN=1: the exact accelerate commands they
would run, from fake environments (the sbatch file runs under bash with fake `scontrol` and `srun`
first on PATH). Nothing here starts accelerate or needs a GPU or SLURM."""
import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# Passed on untouched: none split, expanded or dropped.
TRAINING_ARGS = ["--config", "configs/grpo/vace_1.3b.yaml", "train.lr=5e-5",
                 "rewards=[{name: reward_model, path: a b}]", "", "--flag with spaces", "$HOME", "'quoted'"]
USAGE = "usage: launch/multi_node.sh reward|grpo|ipro [training arguments...]"


def accelerate(config: str, nodes: int, rank: int, processes: int, master: str, script: str,
               port: int = 29500) -> list[str]:
    return ["accelerate", "launch", "--config_file", config, "--num_machines", str(nodes), "--machine_rank", str(rank),
            "--num_processes", str(processes), "--main_process_ip", master, "--main_process_port", str(port),
            script, *TRAINING_ARGS]


ENGINES = {  # stage -> (entry script, accelerate config)
    "reward": ("train_reward.py", "launch/accelerate/multi_gpu_zero2.yaml"),
    "grpo": ("train_grpo.py", "launch/accelerate/multi_gpu.yaml"),
    "ipro": ("train_ipro.py", "launch/accelerate/multi_gpu.yaml"),
}


def clean_env(**values: str) -> dict[str, str]:
    """The test's environment without any launch or SLURM variable of the machine running it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in {"NODE_RANK", "NUM_NODES", "GPUS_PER_NODE", "MASTER_ADDR",
                                                      "MASTER_PORT", "DRY_RUN"}}
    return {**env, "DRY_RUN": "1", **values}


def run(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def commands(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("stage", ENGINES)
def test_multi_node_picks_the_stage_script_and_engine(stage):
    script, config = ENGINES[stage]
    env = clean_env(NUM_NODES="4", NODE_RANK="2", GPUS_PER_NODE="8", MASTER_ADDR="10.0.0.1", MASTER_PORT="29600")
    assert commands(run("launch/multi_node.sh", [stage, *TRAINING_ARGS], env)) == [
        accelerate(config, 4, 2, 32, "10.0.0.1", script, port=29600)]


def test_one_node_defaults():
    env = clean_env(GPUS_PER_NODE="2")
    assert commands(run("launch/multi_node.sh", ["ipro", *TRAINING_ARGS], env)) == [
        accelerate("launch/accelerate/multi_gpu.yaml", 1, 0, 2, "localhost", "train_ipro.py")]


def test_only_stage_1_gets_deepspeed_with_zero2():
    """The engine is in the accelerate config file each command names."""
    def config(stage: str) -> dict:
        return yaml.safe_load((ROOT / ENGINES[stage][1]).read_text())

    reward = config("reward")
    assert reward["distributed_type"] == "DEEPSPEED"
    assert reward["deepspeed_config"]["deepspeed_config_file"] == "launch/deepspeed/zero2.json"
    assert reward["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"  # accelerate on every node, no pdsh
    zero = json.loads((ROOT / "launch/deepspeed/zero2.json").read_text())
    assert zero["zero_optimization"]["stage"] == 2
    for stage in ("grpo", "ipro"):
        assert config(stage)["distributed_type"] == "MULTI_GPU" and "deepspeed_config" not in config(stage)


@pytest.mark.parametrize("stage, deepspeed", [("reward", True), ("grpo", False)])
def test_accelerate_reads_the_command_as_intended(stage, deepspeed, monkeypatch):
    """accelerate's own parsing of the printed command (its launch validation, not a launch)."""
    monkeypatch.chdir(ROOT)  # the command names its config relative to the repository root
    launch = pytest.importorskip("accelerate.commands.launch")
    if not hasattr(launch, "_validate_launch_command"):
        pytest.skip("this accelerate version validates launches elsewhere")
    env = clean_env(NUM_NODES="2", NODE_RANK="1", GPUS_PER_NODE="8", MASTER_ADDR="node0")
    [command] = commands(run("launch/multi_node.sh", [stage, *TRAINING_ARGS], env))
    args, _, _ = launch._validate_launch_command(launch.launch_command_parser().parse_args(command[2:]))
    assert (args.use_deepspeed, args.multi_gpu, args.use_fsdp) == (deepspeed, not deepspeed, False)
    assert (args.num_machines, args.machine_rank, args.num_processes, args.main_process_ip) == (2, 1, 16, "node0")
    assert args.training_script_args == TRAINING_ARGS
    if deepspeed:
        assert args.deepspeed_config_file == "launch/deepspeed/zero2.json"
        assert args.deepspeed_multinode_launcher == "standard"


def run_synthetic_world(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """launch/synthetic_world.sh with accelerate and python replaced by a recorder of their arguments."""
    log = tmp_path / "calls.jsonl"
    recorder = tmp_path / "record"
    recorder.write_text(f"#!/usr/bin/env python3\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    done = subprocess.run(["bash", str(ROOT / "launch/synthetic_world.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "ACCELERATE": str(recorder), "PYTHON": str(recorder)})
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


def test_the_quick_start_runs_short_stage_2_budgets_into_its_own_folder(tmp_path):
    done, calls = run_synthetic_world(tmp_path)
    assert done.returncode == 0, done.stderr
    launch = ["launch", "--num_processes", "1", "--cpu"]
    assert calls[:4] == [
        [*launch, "train_reward.py", "--config", "configs/reward/synthetic.yaml"],
        [*launch, "train_grpo.py", "--config", "configs/grpo/synthetic_vace.yaml", "train.num_steps=20",
         "train.eval_every=20", "output_dir=runs/quick/grpo_synthetic_vace"],
        [*launch, "train_grpo.py", "--config", "configs/grpo/synthetic_phantom.yaml", "train.num_steps=20",
         "train.eval_every=20", "output_dir=runs/quick/grpo_synthetic_phantom"],
        [*launch, "train_ipro.py", "--config", "configs/ipro/synthetic_vace.yaml", "train.num_steps=60",
         "train.eval_every=60", "output_dir=runs/quick/ipro_synthetic_vace"],
    ]
    assert calls[4] == ["-m", "identity_grpo.report.compare", "runs/quick/grpo_synthetic_vace",
                        "runs/quick/ipro_synthetic_vace", "runs/quick/grpo_synthetic_phantom"]
    assert calls[5][-2:] == ["--out", "runs/quick/report_synthetic"] and len(calls) == 6


def test_the_full_run_uses_the_configs_as_they_are(tmp_path):
    done, calls = run_synthetic_world(tmp_path, "--full")
    assert done.returncode == 0, done.stderr
    assert [call[5:] for call in calls[1:4]] == [
        ["--config", "configs/grpo/synthetic_vace.yaml", "output_dir=runs/grpo_synthetic_vace"],
        ["--config", "configs/grpo/synthetic_phantom.yaml", "output_dir=runs/grpo_synthetic_phantom"],
        ["--config", "configs/ipro/synthetic_vace.yaml", "output_dir=runs/ipro_synthetic_vace"],
    ]
    assert calls[5][-2:] == ["--out", "runs/report_synthetic"]


def test_the_quick_start_refuses_an_unknown_flag(tmp_path):
    done, calls = run_synthetic_world(tmp_path, "--fast")
    assert done.returncode == 2 and calls == []
    assert done.stderr.strip() == "usage: bash launch/synthetic_world.sh [--full]"
