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
