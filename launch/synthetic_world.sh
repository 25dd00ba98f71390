#!/usr/bin/env bash
# The whole method on the synthetic multi-person world, on a CPU, one stage after the other:
#   1. the identity reward model (pairs, tiny backbone, evaluation against a baseline)
#   2. GRPO on the toy VACE-style generator, then on the toy Phantom-style one
#      (each toy generator is pretrained on the world on first use and cached)
#   3. the reward-gradient mode (IPRO) on the toy VACE-style generator, on GRPO's budget
#   4. the evaluation report: before/after tables, curves, per-person histograms, sample grids
# Each training command prints its before/after table; the report lands in runs/report_synthetic.
#   bash launch/setup.sh && bash launch/synthetic_world.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ACCELERATE=${ACCELERATE:-.venv/bin/accelerate}
PYTHON=${PYTHON:-.venv/bin/python}
launch() { "$ACCELERATE" launch --num_processes 1 --cpu "$@"; }

launch train_reward.py --config configs/reward/synthetic.yaml
launch train_grpo.py --config configs/grpo/synthetic_vace.yaml
launch train_grpo.py --config configs/grpo/synthetic_phantom.yaml
launch train_ipro.py --config configs/ipro/synthetic_vace.yaml
"$PYTHON" -m identity_grpo.report.compare runs/grpo_synthetic_vace runs/ipro_synthetic_vace runs/grpo_synthetic_phantom
"$PYTHON" -m identity_grpo.report --config configs/grpo/synthetic_vace.yaml \
    --lora runs/grpo_synthetic_vace/final --name GRPO --lora runs/ipro_synthetic_vace/final --name IPRO \
    --out runs/report_synthetic
