"""python -m identity_grpo.plan --config configs/grpo/vace_1.3b.yaml --gpus 8 --gpu-memory 80 [key=value ...]

Prints the per-GPU memory plan of a recipe (reward / grpo / ipro, told apart by its sections):
resident weights and optimizer state, the activations of each phase, the peak. Exit status 0 when
it fits, 1 with one line naming the lever to pull when it does not, 2 for a config it cannot read.
Dotted overrides work as for the trainers (train.train_batch_size=2).
"""
from __future__ import annotations

import argparse
import sys

from identity_grpo.core.config_io import ConfigError
from identity_grpo.plan.activations import load_coefficients
from identity_grpo.plan.planner import Launch, PlanError, make_plan
from identity_grpo.plan.table import render


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m identity_grpo.plan", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="an experiment YAML (configs/reward|grpo|ipro/*.yaml)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the launch (default 8)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU (default 80)")
    parser.add_argument("--shard", default="auto", choices=["auto", "fsdp", "zero2", "none"],
                        help="auto: FSDP2 full-shard of the generator for grpo/ipro, DeepSpeed ZeRO-2 for reward")
    parser.add_argument("--sequence-parallel", type=int, default=0,
                        help="GPUs that split one IPRO sample's tokens (sequence parallelism; default: the "
                             "config's train.sequence_parallel)")
    parser.add_argument("--people", type=int, default=3, help="references per sample (default 3)")
    parser.add_argument("--reserve", type=float, default=3.0, help="GB kept free per GPU (default 3)")
    parser.add_argument("--coefficients", help="coefficients JSON (default: the package's measured table)")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    launch = Launch(gpus=args.gpus, gpu_memory=args.gpu_memory, shard=args.shard,
                    sequence_parallel=args.sequence_parallel, people=args.people,
                    reserve=args.reserve)
    coefficients = load_coefficients(args.coefficients) if args.coefficients else load_coefficients()
    try:
        plan = make_plan(args.config, overrides, launch, coefficients)
    except (ConfigError, PlanError, FileNotFoundError) as error:
        print(f"plan: {error}", file=sys.stderr)
        return 2
    print(render(plan, coefficients))
    refusal = plan.refusal()
    if refusal:
        print(refusal, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
