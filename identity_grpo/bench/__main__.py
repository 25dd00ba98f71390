"""python -m identity_grpo.bench --config configs/grpo/synthetic_vace.yaml [--iterations 2] [--json out.json] [key=value ...]

Runs a few real iterations of the config's recipe (GRPO, or IPRO for a config with a face_reward
section) and prints where an iteration's time goes, samples per second, peak memory and what each
fast path buys, measured side by side. configs/bench/*.yaml hold random-weight generators at the
published shapes (for a GPU); --random-weights builds them (see identity_grpo/bench/shapes.py).
Dotted overrides work as for the trainers (speed.condition_cache=256).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

from identity_grpo.core.config_io import ConfigError, load_config


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m identity_grpo.bench", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a GRPO or IPRO YAML (configs/grpo|ipro|bench/*.yaml)")
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations after the warm-up (default 2)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--no-compare", action="store_true", help="skip the side-by-side fast-path measurements")
    parser.add_argument("--mfu", action="store_true", help="model FLOP utilization on a CPU too (always on a GPU)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random generator and reward model at the published shapes (configs/bench/*.yaml)")
    parser.add_argument("--tiny", action="store_true", help="with --random-weights: the same classes at tiny sizes")
    return parser.parse_known_args(argv)


def method_of(path: str) -> str:
    """ipro for a config with a face_reward section, else grpo."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return "ipro" if "face_reward" in raw else "grpo"


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        method = method_of(args.config)
        if method == "grpo":
            from identity_grpo.grpo.config import GrpoConfig as config_class
        else:
            from identity_grpo.ipro.config import IproConfig as config_class
        cfg = load_config(config_class, args.config, overrides)
        if args.iterations < 1:
            raise ConfigError(f"--iterations must be >= 1, got {args.iterations}")
        if args.tiny and not args.random_weights:
            raise ConfigError("--tiny: only with --random-weights")
        generator = reward_fns = None
        if args.random_weights:
            if method != "grpo":
                raise ConfigError("--random-weights: GRPO configs only (configs/bench/grpo_*.yaml)")
            from identity_grpo.bench.shapes import random_parts

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            generator, reward_fns = random_parts(cfg, args.tiny, device)
    except (ConfigError, FileNotFoundError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    from identity_grpo.bench.run import run_benchmark
    from identity_grpo.bench.table import render

    result = run_benchmark(cfg, method, args.iterations, generator, reward_fns, compare=not args.no_compare,
                           mfu=args.mfu or None,
                           log=lambda line: print(line, file=sys.stderr))
    result["command"] = "python -m identity_grpo.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(render(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
