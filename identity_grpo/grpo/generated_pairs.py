"""Stranger pairs drawn by a stage-2 generator, for stage 1 on the synthetic world.

    python -m identity_grpo.grpo.generated_pairs --config configs/grpo/synthetic_vace.yaml \\
        --pairs 600 --out data/synthetic/generated_pairs/vace [key=value ...]

Stage 1's rendered pairs teach the reward model to compare people with their references on clean
renders; the clips GRPO scores are the generator's, grainy and smeared, and there a reward model
trained on renders alone ranks a group's samples with the world's identity measure at about zero.
These pairs put the same comparison in the generator's style: for a prompt of the world, the
generator draws the right people and, from the same initial and per-step noise, the same prompt
with one person replaced by a look-alike (1-3 face attributes changed, same shirt; its words and its
reference). Scored with the right references, the first clip is the better one; nothing but the
one person tells them apart. The clips come from the config's generator and training sampler
(sampling.train_steps, sampling.noise), as GRPO's samples do.

Training identities by default (`--split heldout` for a test manifest). Every pair's people and
stranger come from (seed, pair index) alone; a batch's noise from (seed, batch index). The folder is
owned as reward_model/build_pairs.py's is (identity_grpo.core.owned_folder): a folder holding other
files is refused, the same settings again do nothing, other settings remove the old build's files
and only those. Non-finite clips are skipped and counted.

The manifest (pairs.jsonl) is an ordinary pair manifest: add it to stage 1 with
data.extra_train_manifests.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from identity_grpo.core.config_io import ConfigError, load_config, to_dict
from identity_grpo.core.finite import finite_samples
from identity_grpo.core.owned_folder import BuildRefused, claim
from identity_grpo.core.seeds import Stream, stream_rng
from identity_grpo.core.video import write_image, write_video
from identity_grpo.finetune.sampling import sample_with_log_probs
from identity_grpo.generators.base import Generator
from identity_grpo.generators.factory import build_generator
from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.world.clips import make_prompt
from identity_grpo.world.identities import FACE_ATTRIBUTES, Identity, face_differences, look_alike
from identity_grpo.world.prompt_set import SPLIT_CODES, synthetic_prompt_set
from identity_grpo.world.render import render_reference
from reward_model.pairs import write_pairs

BUILD_VERSION = 1  # bump when the recipe changes, so old builds are redone
WRITER = "identity_grpo.grpo.generated_pairs"
MANIFEST = "pairs.jsonl"


@dataclass(frozen=True)
class GeneratedPairSettings:
    num_pairs: int
    split: str = "train"  # whose identities: "train" for training pairs, "heldout" for a test manifest
    seed: int = 0
    batch_size: int = 8  # pairs per generator call (part of the settings: a batch shares its noise)
    fps: float = 8.0
    reference_size: int = 32
    version: int = BUILD_VERSION


@dataclass
class PairPlan:
    index: int
    people: list[Identity]  # left to right, as the references show them
    victim: int  # the person the stranger replaces
    stranger: Identity
    better_is_a: bool


def plan_pairs(settings: GeneratedPairSettings) -> list[PairPlan]:
    """Who appears in each pair, whom the stranger replaces, and which side is the better clip."""
    plans = []
    for index, sample in enumerate(synthetic_prompt_set(settings.num_pairs, settings.split, settings.seed)):
        rng = np.random.default_rng([settings.seed, SPLIT_CODES[settings.split], index])
        people = sample.identities
        victim = int(rng.integers(len(people)))
        others = people[:victim] + people[victim + 1 :]
        stranger = look_alike(rng, people[victim], int(rng.integers(1, 4)), others, settings.split)
        plans.append(PairPlan(index, people, victim, stranger, bool(rng.uniform() < 0.5)))
    return plans


def batches_by_people(plans: list, size: int) -> list[list]:
    """Plans (anything with `.people`) cut into batches of one people count (the generators encode
    one reference count per batch), in increasing count, each in index order."""
    batches = []
    for count in sorted({len(p.people) for p in plans}):
        same = [p for p in plans if len(p.people) == count]
        batches += [same[i : i + size] for i in range(0, len(same), size)]
    return batches


def draw_clips(generator: Generator, cfg: GrpoConfig, prompts: list[str], references: list[list[np.ndarray]],
               noise: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clips uint8 [B, T, H, W, 3] from the training sampler, and [B] bool: finite."""
    with torch.no_grad():
        conds = generator.encode_conditions(prompts, references)
        trajectory = sample_with_log_probs(generator, conds, generator.sigmas(cfg.sampling.train_steps),
                                           cfg.sampling.noise, noise)
        videos = generator.decode(trajectory.final_latents)
    finite = (finite_samples(trajectory.latents) & finite_samples(videos)).cpu().numpy()
    clips = (videos.float().nan_to_num(0.0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return clips, finite


def _files(plan: PairPlan) -> tuple[str, str]:
    return f"videos/{plan.index:06d}_a.mp4", f"videos/{plan.index:06d}_b.mp4"


def reference_file(identity: Identity) -> str:
    return f"references/{identity.id:05d}.png"


def check_counts(settings, names: tuple[str, ...]) -> None:
    """The split is known and each named setting is an integer >= 1 (BuildRefused naming it)."""
    if settings.split not in SPLIT_CODES:
        raise BuildRefused(f"split must be one of {list(SPLIT_CODES)}, got {settings.split!r}")
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BuildRefused(f"{name} must be an integer >= 1, got {value!r}")


def recorded_settings(settings, cfg: GrpoConfig) -> dict:
    """What a build depends on: its settings, the generator and the training sampler."""
    return {"pairs": asdict(settings), "generator": to_dict(cfg.generator),
            "sampler": {"train_steps": cfg.sampling.train_steps, "noise": to_dict(cfg.sampling.noise)}}


def write_references(out_dir: Path, plans: list, size: int) -> None:
    """One reference image per person of the plans (anything with `.people`), each written once."""
    (out_dir / "references").mkdir(parents=True, exist_ok=True)
    for plan in plans:
        for person in plan.people:
            path = out_dir / reference_file(person)
            if not path.is_file():
                write_image(path, render_reference(person, size))


def build_generated_pairs(out_dir: str | Path, cfg: GrpoConfig, settings: GeneratedPairSettings,
                          generator: Generator | None = None, progress: bool = True) -> tuple[Path, int]:
    """Build (or find already built) the pairs; returns (manifest path, pairs skipped for a non-finite
    clip). `generator`: the config's generator already built (else built here, on the CPU)."""
    check_counts(settings, ("num_pairs", "batch_size", "reference_size"))
    out_dir = Path(out_dir)
    folder = claim(out_dir, WRITER)
    recorded = recorded_settings(settings, cfg)
    if folder.complete and folder.settings == recorded and folder.intact(folder.listed()):
        kept = sum(1 for line in (out_dir / MANIFEST).read_text().splitlines() if line.strip())
        return out_dir / MANIFEST, settings.num_pairs - kept
    folder.remove(folder.listed())  # what an earlier (other or unfinished) build left; nothing else
    folder.begin(recorded)
    plans = plan_pairs(settings)
    references = sorted({reference_file(p) for plan in plans for p in plan.people})
    folder.plan([f for plan in plans for f in _files(plan)] + references)
    write_references(out_dir, plans, settings.reference_size)
    (out_dir / "videos").mkdir(exist_ok=True)
    generator = generator or build_generator(cfg.generator)
    rows, skipped = [], 0
    bar = tqdm(total=len(plans), desc="generated pairs", unit="pair", disable=not progress)
    for number, batch in enumerate(batches_by_people(plans, settings.batch_size)):
        drawn = []
        for people in ([p.people for p in batch],
                       [p.people[: p.victim] + [p.stranger] + p.people[p.victim + 1 :] for p in batch]):
            shown = [[render_reference(person, settings.reference_size) for person in group] for group in people]
            # One seed for both calls: the two clips of a pair share their initial and per-step noise.
            drawn.append(draw_clips(generator, cfg, [make_prompt(group) for group in people], shown,
                                    stream_rng(settings.seed, Stream.GENERATED_PAIRS, number)))
        (right, right_ok), (wrong, wrong_ok) = drawn
        for j, plan in enumerate(batch):
            if not (right_ok[j] and wrong_ok[j]):
                skipped += 1
                continue
            file_a, file_b = _files(plan)
            video_a, video_b = (right[j], wrong[j]) if plan.better_is_a else (wrong[j], right[j])
            write_video(out_dir / file_a, video_a, settings.fps)
            write_video(out_dir / file_b, video_b, settings.fps)
            rows.append(_row(plan, settings, cfg.generator.kind, file_a, file_b, video_a.shape[0]))
        bar.update(len(batch))
    bar.close()
    videos = [f for plan in plans for f in _files(plan)]
    folder.remove([f for f in videos if not (out_dir / f).is_file()])  # the skipped pairs' files, never written
    folder.record([f for f in videos if (out_dir / f).is_file()] + references)
    folder.write({MANIFEST: partial(write_pairs, rows=sorted(rows, key=lambda row: row["pair_id"]))})
    folder.finish()
    return out_dir / MANIFEST, skipped


def _row(plan: PairPlan, settings: GeneratedPairSettings, kind: str, file_a: str, file_b: str, num_frames: int) -> dict:
    changed = face_differences(plan.people[plan.victim], plan.stranger)
    return {
        "pair_id": f"generated-{kind}-{settings.split}-{plan.index:06d}",
        "prompt": make_prompt(plan.people),
        "references": [reference_file(p) for p in plan.people],
        "video_a": file_a,
        "video_b": file_b,
        "label": "a" if plan.better_is_a else "b",
        "source": "synthetic",
        "distortion": "generated_stranger",
        "severity": changed / len(FACE_ATTRIBUTES),
        "severity_other": 0.0,
        "num_frames": int(num_frames),
        "fps": settings.fps,
        "identity_ids": [p.id for p in plan.people],
        "stranger_id": plan.stranger.id,
        "victim": plan.victim,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a GRPO config: its generator and training sampler draw the clips")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--split", default="train", choices=sorted(SPLIT_CODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        cfg = load_config(GrpoConfig, args.config, args.overrides)
        settings = GeneratedPairSettings(args.pairs, args.split, args.seed, args.batch_size)
        manifest, skipped = build_generated_pairs(args.out, cfg, settings)
    except (BuildRefused, ConfigError) as error:
        print(f"generated_pairs: error: {error}", file=sys.stderr)
        return 2
    print(f"{manifest}: {args.pairs - skipped} pairs ({skipped} skipped for a non-finite clip) "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
