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
    fsdp = yaml.safe_load((ROOT / "launch/accelerate/fsdp2.yaml").read_text())  # ready, not used by any stage
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    assert "fsdp2.yaml" not in {c for _, c in ENGINES.values()}


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


def test_the_fsdp2_config_is_a_valid_fsdp2_launch(monkeypatch):
    """Ready for stage 2 once its trainers accept FSDP (no stage uses it yet)."""
    monkeypatch.chdir(ROOT)
    launch = pytest.importorskip("accelerate.commands.launch")
    if not hasattr(launch, "_validate_launch_command"):
        pytest.skip("this accelerate version validates launches elsewhere")
    parsed = launch.launch_command_parser().parse_args(
        ["--config_file", "launch/accelerate/fsdp2.yaml", "--num_processes", "16", "train_grpo.py"])
    args, _, _ = launch._validate_launch_command(parsed)
    assert (args.use_fsdp, args.use_deepspeed, int(args.fsdp_version)) == (True, False, 2)
    assert (args.fsdp_auto_wrap_policy, args.fsdp_transformer_layer_cls_to_wrap) == ("TRANSFORMER_BASED_WRAP",
                                                                                      "WanTransformerBlock")


@pytest.mark.parametrize("args, message", [
    (["dpo", "--config", "x.yaml"], f"{USAGE} (unknown stage 'dpo')"),
    ([], f"{USAGE} (unknown stage '')"),
])
def test_an_unknown_stage_is_one_line_and_exit_2(args, message):
    result = run("launch/multi_node.sh", args, clean_env())
    assert (result.returncode, result.stdout, result.stderr) == (2, "", message + "\n")


def test_several_nodes_need_the_master_address():
    result = run("launch/multi_node.sh", ["grpo"], clean_env(NUM_NODES="2"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "launch/multi_node.sh: MASTER_ADDR is required with NUM_NODES=2 (node 0's address)\n"


# --- SLURM --------------------------------------------------------------------------------

FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG/scontrol"
[ "$1 $2" = "show hostnames" ] && [ "$3" = "gpu-[07-09]" ] && printf 'gpu-07\\ngpu-08\\ngpu-09\\n'
"""
# Like srun: one task per node of the job, each with its own SLURM_NODEID / SLURM_PROCID.
FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_LOG/srun"
while [[ "$1" == -* ]]; do shift; done
for ((node = 0; node < SLURM_NNODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@"
done
"""


@pytest.fixture
def slurm(tmp_path):
    """An environment as sbatch gives its batch step on the first of 3 nodes, fake tools first on PATH."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir(), log.mkdir()
    for name, text in {"scontrol": FAKE_SCONTROL, "srun": FAKE_SRUN}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    # NODE_RANK / NUM_NODES / MASTER_ADDR left from elsewhere must not win over the job's own values.
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log), SLURM_JOB_NODELIST="gpu-[07-09]",
                    SLURM_NNODES="3", SLURM_NODEID="0", SLURM_PROCID="0", SLURM_GPUS_ON_NODE="4",
                    SLURM_SUBMIT_DIR=str(ROOT), NODE_RANK="5")
    return env, log


@pytest.mark.parametrize("stage", ENGINES)
def test_sbatch_runs_one_task_per_node_with_slurms_values(slurm, stage):
    env, log = slurm
    script, config = ENGINES[stage]
    lines = commands(run("launch/slurm.sbatch", [stage, *TRAINING_ARGS], env))
    srun = ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c",
            'NODE_RANK=$SLURM_NODEID exec bash launch/multi_node.sh "$@"', "multi_node.sh", stage, *TRAINING_ARGS]
    assert lines == [srun, *(accelerate(config, 3, rank, 12, "gpu-07", script) for rank in range(3))]
    assert (log / "srun").read_text().splitlines() == srun[1:]  # what srun itself was given
    assert (log / "scontrol").read_text() == "show hostnames gpu-[07-09]\n"


def test_sbatch_settings_override_slurms(slurm):
    env, _ = slurm
    env = {**env, "GPUS_PER_NODE": "2", "MASTER_ADDR": "10.1.1.1", "MASTER_PORT": "31000"}
    lines = commands(run("launch/slurm.sbatch", ["grpo", *TRAINING_ARGS], env))
    assert lines[1:] == [accelerate("launch/accelerate/multi_gpu.yaml", 3, rank, 6, "10.1.1.1", "train_grpo.py",
                                    port=31000) for rank in range(3)]


def test_sbatch_refuses_an_unknown_stage_before_starting_tasks(slurm):
    env, log = slurm
    result = run("launch/slurm.sbatch", ["dpo"], env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"{USAGE} (unknown stage 'dpo')\n"
    assert not (log / "srun").exists()


def test_sbatch_outside_slurm_is_one_line():
    result = run("launch/slurm.sbatch", ["grpo"], clean_env())
    assert result.returncode == 2
    assert result.stderr == "launch/slurm.sbatch: SLURM_JOB_NODELIST is not set; submit it with sbatch\n"
