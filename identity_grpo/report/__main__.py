"""python -m identity_grpo.report --config CONFIG.yaml --lora runs/<run>/final --out reports/<run> [key=value ...]

Samples the config's generator without and with each LoRA on data.eval_manifest (fixed noise per
prompt and seed), scores the clips with the config's rewards (plus the synthetic world's measure
when the manifest has identity_ids, plus face metrics with --faces-pack), and writes the report
folder (report.md, metrics.csv, per_sample.csv, figures, sample grids as mp4 / GIF / PNG).
"""
from __future__ import annotations

import argparse
import sys

from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.report.pipeline import run_report
from identity_grpo.core.config_io import load_config
from identity_grpo.faces.analyzer import FaceAnalyzerConfig


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m identity_grpo.report", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="GRPO config (YAML): generator, rewards, data.eval_manifest (or data.world)")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH",
                        help="a LoRA folder written by training (runs/<run>/final); repeat to compare several")
    parser.add_argument("--name", action="append", default=[], help="a column name per --lora (default: the run folder)")
    parser.add_argument("--out", required=True, help="report folder to write")
    parser.add_argument("--num-prompts", type=int, default=0, help="first N prompts of the manifest (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", help="noise seeds per prompt (default: train.seed)")
    parser.add_argument("--log", action="append", metavar="LOG_JSONL",
                        help="training log(s) to plot (default: log.jsonl of each LoRA's run, if present)")
    parser.add_argument("--grid-prompts", type=int, help="prompts shown in the sample grid (default: sampling.grid_prompts)")
    parser.add_argument("--faces-pack", help="insightface model pack for face metrics (e.g. antelopev2); off if not given")
    parser.add_argument("--faces-root", default="~/.insightface", help="folder holding models/<pack>/")
    parser.add_argument("--faces-det-size", type=int, nargs=2, default=[640, 640], metavar=("W", "H"),
                        help="detector input size, multiples of 32 (smaller is faster on small clips)")
    parser.add_argument("--curricularface", default="", metavar="PTH",
                        help="CurricularFace IR-101 backbone state dict (the original release's .pth, loaded with "
                             "weights_only) for FaceSim-Cur; needs --faces-pack")
    parser.add_argument("--curricularface-bgr", action="store_true",
                        help="feed CurricularFace BGR crops (default RGB)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> str:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise SystemExit(f"report: unknown arguments {bad} (config overrides are key.sub=value)")
    if args.name and len(args.name) != len(args.lora):
        raise SystemExit(f"report: {len(args.name)} --name for {len(args.lora)} --lora")
    cfg = load_config(GrpoConfig, args.config, overrides)
    loras = dict(zip(args.name, args.lora)) if args.name else args.lora
    faces = (FaceAnalyzerConfig(pack=args.faces_pack, root=args.faces_root, det_size=args.faces_det_size)
             if args.faces_pack else None)
    path = run_report(cfg, loras, args.out, num_prompts=args.num_prompts, seeds=args.seeds, logs=args.log,
                      faces=faces, device=args.device, grid_prompts=args.grid_prompts,
                      progress=not args.no_progress, config_path=args.config,
                      curricularface=args.curricularface, curricularface_bgr=args.curricularface_bgr)
    print(f"report written: {path}")
    return str(path)


if __name__ == "__main__":
    main()
