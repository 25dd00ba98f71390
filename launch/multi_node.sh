#!/usr/bin/env bash
# Multi-node launch: run this on every node with the same MASTER_ADDR / MASTER_PORT.
#   NODE_RANK=0 NUM_NODES=2 GPUS_PER_NODE=8 MASTER_ADDR=10.0.0.1 \
#     bash launch/multi_node.sh train_grpo.py --config configs/grpo/vace_1.3b.yaml
# Under SLURM, NODE_RANK, NUM_NODES and MASTER_ADDR default from the job's variables.
set -euo pipefail
NUM_NODES=${NUM_NODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1 || echo localhost)}
MASTER_PORT=${MASTER_PORT:-29500}
DS_CONFIG=${DS_CONFIG:-launch/deepspeed/zero2.json}
exec accelerate launch \
  --use_deepspeed --deepspeed_config_file "$DS_CONFIG" \
  --num_machines "$NUM_NODES" --machine_rank "$NODE_RANK" \
  --num_processes $((NUM_NODES * GPUS_PER_NODE)) \
  --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
  --mixed_precision bf16 \
  "$@"
