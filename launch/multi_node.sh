#!/usr/bin/env bash
# Launch one stage on one node of a multi-node run: run it on every node with the same NUM_NODES,
# MASTER_ADDR and MASTER_PORT and that node's NODE_RANK (launch/slurm.sbatch does this under SLURM).
#   NUM_NODES=2 NODE_RANK=0 MASTER_ADDR=node0 GPUS_PER_NODE=8 \
#     bash launch/multi_node.sh grpo --config configs/grpo/vace_1.3b.yaml data.train_manifest=...
# STAGE: reward (train_reward.py) | grpo (train_grpo.py) | ipro (train_ipro.py); the arguments after
# it go to the training script untouched. DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

usage="usage: launch/multi_node.sh reward|grpo|ipro [training arguments...]"
stage=${1:-}
if [ $# -gt 0 ]; then shift; fi

# The engine of each stage: an accelerate config, the one place to change it. The trainers refuse
# an engine they do not support (identity_grpo/core/recipe.py, make_accelerator's `engines`):
#   reward: DeepSpeed ZeRO-2 (launch/deepspeed/zero2.json) shards optimizer state and gradients.
#   grpo, ipro: plain multi-GPU processes; the generator transformer is sharded by the trainer itself
#     (FSDP2, torch's fully_shard) when the experiment config says train.sharding: fsdp.
case "$stage" in
  reward) script=train_reward.py; engine=launch/accelerate/multi_gpu_zero2.yaml ;;
  grpo) script=train_grpo.py; engine=launch/accelerate/multi_gpu.yaml ;;
  ipro) script=train_ipro.py; engine=launch/accelerate/multi_gpu.yaml ;;
  *) echo "$usage (unknown stage '$stage')" >&2; exit 2 ;;
esac
if [ ! -f "$engine" ]; then  # the configs name their files relative to the repository root
  echo "launch/multi_node.sh: $engine not found; run from the repository root" >&2
  exit 2
fi

NUM_NODES=${NUM_NODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_PORT=${MASTER_PORT:-29500}
if [ "$NUM_NODES" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
  # Every node must reach the same rendezvous; a per-node default would start NUM_NODES separate runs.
  echo "launch/multi_node.sh: MASTER_ADDR is required with NUM_NODES=$NUM_NODES (node 0's address)" >&2
  exit 2
fi
MASTER_ADDR=${MASTER_ADDR:-localhost}

# The config file keeps accelerate from reading the user's default config (it could name another
# engine); the flags after it override its single-node machine and process counts.
cmd=(accelerate launch --config_file "$engine"
  --num_machines "$NUM_NODES" --machine_rank "$NODE_RANK" --num_processes $((NUM_NODES * GPUS_PER_NODE))
  --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT"
  "$script" "$@")

if [ "${DRY_RUN:-0}" = 1 ]; then
  printf -v line '%q ' "${cmd[@]}"
  echo "${line% }"
else
  exec "${cmd[@]}"
fi
