#!/usr/bin/env bash
# The whole method on the synthetic multi-person world, on a CPU, one stage after the other:
#   1. the identity reward model (pairs, tiny backbone, evaluation against a baseline)
#   2. GRPO on the toy VACE-style generator, then on the toy Phantom-style one
#   3. the reward-gradient mode (IPRO) on the toy VACE-style generator
#   4. a side-by-side table and the evaluation report: before/after tables, curves, per-person
#      histograms, sample grids
# The pretrained toy generators, world face models and reward backbone ship in data/pretrained/
# (nothing is pretrained on a fresh clone unless their building code changed).
#
#   bash launch/setup.sh && bash launch/synthetic_world.sh           # quick: about an hour on one CPU core
#   bash launch/synthetic_world.sh --full                             # the configs' budgets (README figures)
#
# Quick runs the same stage 1 and the same held-out evaluation (same identities, prompts, noise,
# independent measure) with shorter stage-2 trainings (GRPO 20 iterations, IPRO 60 steps; evaluated
# before and after only) into runs/quick/; --full runs the configs as they are into runs/.
# Each training command prints its before/after table.
set -euo pipefail
cd "$(dirname "$0")/.."
ACCELERATE=${ACCELERATE:-.venv/bin/accelerate}
PYTHON=${PYTHON:-.venv/bin/python}
launch() { "$ACCELERATE" launch --num_processes 1 --cpu "$@"; }

case "${1:-}" in
  --full) runs=runs; grpo=(); ipro=() ;;
  "") runs=runs/quick
      grpo=(train.num_steps=20 train.eval_every=20)
      ipro=(train.num_steps=60 train.eval_every=60) ;;
  *) echo "usage: bash launch/synthetic_world.sh [--full]" >&2; exit 2 ;;
esac

launch train_reward.py --config configs/reward/synthetic.yaml  # the same in both: --full reuses a finished one
launch train_grpo.py --config configs/grpo/synthetic_vace.yaml "${grpo[@]}" output_dir=$runs/grpo_synthetic_vace
launch train_grpo.py --config configs/grpo/synthetic_phantom.yaml "${grpo[@]}" output_dir=$runs/grpo_synthetic_phantom
launch train_ipro.py --config configs/ipro/synthetic_vace.yaml "${ipro[@]}" output_dir=$runs/ipro_synthetic_vace
"$PYTHON" -m identity_grpo.report.compare $runs/grpo_synthetic_vace $runs/ipro_synthetic_vace $runs/grpo_synthetic_phantom
"$PYTHON" -m identity_grpo.report --config configs/grpo/synthetic_vace.yaml \
    --lora $runs/grpo_synthetic_vace/final --name GRPO --lora $runs/ipro_synthetic_vace/final --name IPRO \
    --out $runs/report_synthetic
