"""A whole report from a GRPO config: build the generator and scorers, evaluate the base and every
LoRA (evaluate.py), write the folder (folder.py).

    report_md = run_report(cfg, ["runs/grpo/final"], "reports/grpo")   # or {"name": path, ...}
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from identity_grpo.generators.config import TOY

from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.generators.factory import build_generator
from identity_grpo.generators.base import Generator
from identity_grpo.core.prompt_manifest import load_prompt_manifest
from identity_grpo.report.model_samples import evaluate_models, name_loras
from identity_grpo.report.folder import write_report
from identity_grpo.report.markdown import ReportSetup
from identity_grpo.report.scorers import Scorers
from identity_grpo.rewards.registry import RewardFn
from identity_grpo.world.prompt_manifests import write_world_manifests
from identity_grpo.faces.analyzer import FaceAnalyzerConfig
from identity_grpo.core.tracking import read_log
from identity_grpo.core.folder_lock import folder_lock


def eval_manifest(cfg: GrpoConfig) -> str:
    """data.eval_manifest, or with data.world enabled the world's held-out manifest (written if missing,
    the same file training evaluates on)."""
    if cfg.data.eval_manifest:
        return cfg.data.eval_manifest
    world = cfg.data.world
    if not world.enabled:
        raise ValueError("report: data.eval_manifest is empty and data.world is disabled: no prompts to evaluate on")
    if world.num_heldout < 1:
        raise ValueError("report: data.world.num_heldout is 0: the world has no held-out prompts to evaluate on")
    with folder_lock(world.folder):  # a training run may be writing the same files
        _, heldout = write_world_manifests(world.folder, world.num_train, world.num_heldout, world.seed, world.num_people)
    return str(heldout)


def setup_from_config(cfg: GrpoConfig, loras: Mapping[str, Path], seeds: Sequence[int],
                      faces: FaceAnalyzerConfig | None, config_path: str = "", manifest: str = "") -> ReportSetup:
    g, s = cfg.generator, cfg.sampling
    o = g.options
    source = "toy (pretrained on the synthetic world)" if g.pretrained == TOY else g.pretrained
    size = (s.eval_height or o.height, s.eval_width or o.width, s.eval_num_frames or o.num_frames)
    noise = "ODE (deterministic)" if s.eval_noise.kind == "ode" else f"{s.eval_noise.kind} SDE"
    return ReportSetup(
        generator=f"{g.kind}: {source}", loras={k: str(v) for k, v in loras.items()},
        sampler=f"{noise}, {s.eval_steps} steps, {size[0]}x{size[1]} pixels, {size[2]} frames",
        rewards=[(r.name, r.weight) for r in cfg.rewards], manifest=manifest or cfg.data.eval_manifest, seeds=list(seeds),
        faces=faces.pack if faces is not None else "", config=config_path,
    )


def discover_logs(loras: Mapping[str, Path]) -> dict[str, list[dict]]:
    """The log.jsonl of the run each LoRA came from (runs/<run>/final -> runs/<run>/log.jsonl), if there."""
    logs = {}
    for name, path in loras.items():
        folder = path if path.is_dir() else path.parent
        entries = read_log(folder.parent / "log.jsonl")
        if entries:
            logs[name] = entries
    return logs


def run_report(cfg: GrpoConfig, loras: Mapping[str, str | Path] | Sequence[str | Path], out_dir: str | Path,
               num_prompts: int = 0, seeds: Sequence[int] | None = None, logs: Sequence[str | Path] | None = None,
               faces: FaceAnalyzerConfig | None = None, device: str | torch.device | None = None,
               generator: Generator | None = None, reward_fns: Mapping[str, RewardFn] | None = None,
               grid_prompts: int | None = None, progress: bool = True, config_path: str = "",
               curricularface: str = "", curricularface_bgr: bool = False) -> Path:
    """Everything from a GRPO config: its generator (or the base `generator` given), rewards (or
    `reward_fns`) and data.eval_manifest (the first `num_prompts` rows; 0: all); seeds default to
    [train.seed] (the trainer's evaluation noise); logs default to each LoRA run's log.jsonl;
    the grid shows the first `grid_prompts` prompts (default sampling.grid_prompts); `curricularface`:
    a CurricularFace IR-101 backbone .pth for FaceSim-Cur (needs `faces`).
    Returns report.md's path."""
    named = name_loras(loras)
    manifest = eval_manifest(cfg)
    records = load_prompt_manifest(manifest, cfg.data.check_files)
    records = records[:num_prompts] if num_prompts > 0 else records
    seeds = list(seeds) if seeds else [cfg.train.seed]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scorers = Scorers.from_config(cfg, records, device, faces, reward_fns, manifest, curricularface, curricularface_bgr)
    if generator is None:
        generator = build_generator(cfg.generator, device)
    shown = cfg.sampling.grid_prompts if grid_prompts is None else grid_prompts
    results = evaluate_models(generator, records, named, scorers, cfg.sampling, seeds, shown,
                              cfg.train.mixed_precision, progress)
    run_logs = discover_logs(named) if logs is None else read_logs(logs)
    setup = setup_from_config(cfg, named, seeds, faces, config_path, manifest)
    return write_report(out_dir, results, records, setup, run_logs)


def read_logs(paths: Sequence[str | Path]) -> dict[str, list[dict]]:
    """{run folder name: entries} of each log.jsonl (names made unique; empty logs left out)."""
    logs: dict[str, list[dict]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"report: training log not found: {path}")
        name, n = path.parent.name, 2
        while name in logs:
            name, n = f"{path.parent.name}-{n}", n + 1
        entries = read_log(path)
        if entries:
            logs[name] = entries
    return logs
