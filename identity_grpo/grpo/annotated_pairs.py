"""Pairs of a generator's own samples, labelled by the world's identity measure: on the synthetic
world, the stand-in for the paper's human-annotated pairs.

    python -m identity_grpo.grpo.annotated_pairs --config configs/grpo/synthetic_vace.yaml \\
        --prompts 150 --out data/synthetic/annotated_pairs/vace [key=value ...]

The published reward model learned from two kinds of pairs: distorted clean clips, and clips a
generator drew for one prompt and one set of references, a person saying which keeps the people
better. The second is the question GRPO asks of its reward (rank a group's samples), and the one
the rendered and stranger pairs never ask: their two clips differ by construction, a group's
samples differ in how well the generator happened to draw each face. Here the generator draws
`--group` clips per training prompt with the training sampler (sampling.train_steps,
sampling.noise) from different initial noise, as a GRPO group is drawn, and every two of them make
a pair. The annotator is the world's rendering-rule measure (identity_grpo/world/measure.py): the
clip it scores higher is the better one, and a difference of at most `--tie-margin` is a tie.

What this costs in independence, said plainly: the measure that judges stage 2 on held-out
identities then also taught the reward model, on training identities, what a better sample looks
like, as human raters who label the pairs also judge the results on real data. GRPO still never
sees the measure: its reward is the reward model, a learned model that can be hacked, and the
reward-hacking guard (identity_grpo/finetune/guard.py) still watches the held-out measure.

Every prompt's people come from (seed, split, index) alone; a batch's noise from (seed, batch
index). The folder is owned as generated_pairs.py's is: a folder holding other files is refused,
the same settings again do nothing, other settings remove the old build's files and only those. A
non-finite clip is skipped, its pairs with it, and counted.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from itertools import combinations
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from identity_grpo.core.config_io import ConfigError, load_config
from identity_grpo.core.owned_folder import BuildRefused, claim
from identity_grpo.core.seeds import Stream, stream_rng
from identity_grpo.core.video import write_video
from identity_grpo.generators.base import Generator
from identity_grpo.generators.factory import build_generator
from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.grpo.generated_pairs import (batches_by_people, check_counts, draw_clips, recorded_settings,
                                                reference_file, write_references)
from identity_grpo.world.clips import make_prompt
from identity_grpo.world.identities import Identity
from identity_grpo.world.measure import identity_consistency
from identity_grpo.world.prompt_set import SPLIT_CODES, synthetic_prompt_set
from identity_grpo.world.render import render_reference
from reward_model.pairs import write_pairs

BUILD_VERSION = 1  # bump when the recipe changes, so old builds are redone
WRITER = "identity_grpo.grpo.annotated_pairs"
MANIFEST = "pairs.jsonl"


@dataclass(frozen=True)
class AnnotatedPairSettings:
    num_prompts: int
    group: int = 4  # clips per prompt; every two make a pair: group * (group - 1) / 2 pairs per prompt
    tie_margin: float = 0.02  # measures at most this far apart are a tie
    split: str = "train"  # whose identities: "train" for training pairs, "heldout" for a test manifest
    seed: int = 0
    batch_size: int = 4  # prompts per generator call (part of the settings: a batch shares its noise stream)
    fps: float = 8.0
    reference_size: int = 32
    version: int = BUILD_VERSION


@dataclass
class PromptPlan:
    index: int
    people: list[Identity]  # left to right, as the references show them


def label(measure_a: float, measure_b: float, tie_margin: float) -> str:
    """'a', 'b' or 'tie': the clip the measure scores higher; a tie when they differ by at most the margin."""
    if abs(measure_a - measure_b) <= tie_margin:
        return "tie"
    return "a" if measure_a > measure_b else "b"


def _clip_file(index: int, k: int) -> str:
    return f"videos/{index:06d}_{k}.mp4"


def _check(settings: AnnotatedPairSettings) -> None:
    check_counts(settings, ("num_prompts", "batch_size", "reference_size"))
    if not isinstance(settings.group, int) or settings.group < 2:
        raise BuildRefused(f"group must be an integer >= 2 (a pair needs two clips), got {settings.group!r}")
    if not settings.tie_margin >= 0:
        raise BuildRefused(f"tie_margin must be >= 0, got {settings.tie_margin!r}")


def build_annotated_pairs(out_dir: str | Path, cfg: GrpoConfig, settings: AnnotatedPairSettings,
                          generator: Generator | None = None, progress: bool = True) -> tuple[Path, int]:
    """Build (or find already built) the pairs; returns (manifest path, clips skipped as non-finite).
    `generator`: the config's generator already built (else built here, on the CPU)."""
    _check(settings)
    out_dir = Path(out_dir)
    folder = claim(out_dir, WRITER)
    recorded = recorded_settings(settings, cfg)
    if folder.complete and folder.settings == recorded and folder.intact(folder.listed()):
        return out_dir / MANIFEST, settings.num_prompts * settings.group - len(folder.listed("videos/"))
    folder.remove(folder.listed())  # what an earlier (other or unfinished) build left; nothing else
    folder.begin(recorded)
    plans = [PromptPlan(i, sample.identities)
             for i, sample in enumerate(synthetic_prompt_set(settings.num_prompts, settings.split, settings.seed))]
    clips = [_clip_file(plan.index, k) for plan in plans for k in range(settings.group)]
    references = sorted({reference_file(p) for plan in plans for p in plan.people})
    folder.plan(clips + references)
    write_references(out_dir, plans, settings.reference_size)
    (out_dir / "videos").mkdir(exist_ok=True)
    generator = generator or build_generator(cfg.generator)
    rows, skipped = [], 0
    bar = tqdm(total=len(plans), desc="annotated pairs", unit="prompt", disable=not progress)
    for number, batch in enumerate(batches_by_people(plans, settings.batch_size)):
        repeated = [plan for plan in batch for _ in range(settings.group)]  # a group of clips per prompt
        references_of = {plan.index: [render_reference(person, settings.reference_size) for person in plan.people]
                         for plan in batch}  # rendered once per prompt, shown to each of its clips
        shown = [references_of[plan.index] for plan in repeated]
        drawn, finite = draw_clips(generator, cfg, [make_prompt(plan.people) for plan in repeated], shown,
                                   stream_rng(settings.seed, Stream.ANNOTATED_PAIRS, number))
        for j, plan in enumerate(batch):
            group = range(j * settings.group, (j + 1) * settings.group)
            measures = {}
            for k, clip in enumerate(group):
                if not finite[clip]:
                    skipped += 1
                    continue
                measures[k] = identity_consistency(drawn[clip], plan.people).mean
                write_video(out_dir / _clip_file(plan.index, k), drawn[clip], settings.fps)
            for a, b in combinations(sorted(measures), 2):
                rows.append(_row(plan, settings, cfg.generator.kind, (a, b), (measures[a], measures[b]),
                                 drawn.shape[1]))
        bar.update(len(batch))
    bar.close()
    folder.remove([f for f in clips if not (out_dir / f).is_file()])  # the skipped clips' files, never written
    folder.record([f for f in clips if (out_dir / f).is_file()] + references)
    folder.write({MANIFEST: partial(write_pairs, rows=sorted(rows, key=lambda row: row["pair_id"]))})
    folder.finish()
    return out_dir / MANIFEST, skipped


def _row(plan: PromptPlan, settings: AnnotatedPairSettings, kind: str, clips: tuple[int, int],
         measures: tuple[float, float], num_frames: int) -> dict:
    a, b = clips
    return {
        "pair_id": f"annotated-{kind}-{settings.split}-{plan.index:06d}-{a}-{b}",
        "prompt": make_prompt(plan.people),
        "references": [reference_file(p) for p in plan.people],
        "video_a": _clip_file(plan.index, a),
        "video_b": _clip_file(plan.index, b),
        "label": label(*measures, settings.tie_margin),
        "source": "synthetic",
        "distortion": "generated_annotated",
        "severity": None,
        "severity_other": None,
        "num_frames": int(num_frames),
        "fps": settings.fps,
        "identity_ids": [p.id for p in plan.people],
        "measure_a": round(float(measures[0]), 6),
        "measure_b": round(float(measures[1]), 6),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a GRPO config: its generator and training sampler draw the clips")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--prompts", type=int, default=150)
    parser.add_argument("--group", type=int, default=4, help="clips per prompt; every two make a pair")
    parser.add_argument("--tie-margin", type=float, default=0.02)
    parser.add_argument("--split", default="train", choices=sorted(SPLIT_CODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4, help="prompts per generator call")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        cfg = load_config(GrpoConfig, args.config, args.overrides)
        settings = AnnotatedPairSettings(args.prompts, args.group, args.tie_margin, args.split, args.seed,
                                         args.batch_size)
        manifest, skipped = build_annotated_pairs(args.out, cfg, settings)
    except (BuildRefused, ConfigError) as error:
        print(f"annotated_pairs: error: {error}", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    ties = sum(row["label"] == "tie" for row in rows)
    print(f"{manifest}: {len(rows)} pairs ({ties} ties) from {args.prompts} prompts x {args.group} clips "
          f"({skipped} clips skipped as non-finite) in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
