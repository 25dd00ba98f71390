"""Build synthetic preference pairs: mp4 clips, reference PNGs and train/val/test manifests.

    python -m reward_model.build_pairs --out data/synthetic/pairs --train 3000 --val 200 --test 400 --seed 0

Pair kinds (per split, each distortion kind equally often within a kind of pair):
- clean vs distorted (40%): one rendered clip and a distorted copy, severity ~ U(0.3, 1);
- mild vs severe (10%): the same clip distorted twice by one operator (same people, same
  choices), severities s ~ U(0.1, 0.4) and ~ U(s + 0.4, 1);
- the right person vs a stranger (25%): the same scene rendered twice, once with one person
  replaced by a look-alike (1-3 face attributes changed, rarely more; same shirt): nothing looks broken, only
  the references tell which clip is right, so the model has to compare faces with them;
- the right people vs other people (5%): the same scene rendered twice, once with people
  other than the references show (as if the clip were scored with another clip's references);
- ties (20%): two renderings of the same people with different motion and background, both
  clean or both with the same distortion at the same severity.
A share of every kind (NUISANCE_SHARE) has both clips blurred alike: generated videos are often
soft, and a blur that both clips share must not decide the preference.
Train and val pairs show training identities only, test pairs held-out identities only.
Every pair is generated from its own seed (seed, split, index), so the result does not depend
on the number of workers. Every file written is listed in the folder's build manifest
(identity_grpo.core.owned_folder): a folder holding other files is refused, running again with
the same settings does nothing, other settings remove the old build's files and only those.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from identity_grpo.world.distortions import DISTORTIONS, apply_distortion
from reward_model.pairs import write_pairs
from identity_grpo.core.owned_folder import BuildRefused, OwnedFolder, claim
from identity_grpo.world.clips import sample_clip, scale_range
from identity_grpo.world.identities import FACE_ATTRIBUTES, face_differences, look_alike, sample_identities
from identity_grpo.world.render import render_reference
from identity_grpo.core.video import write_image, write_video

BUILD_VERSION = 3  # bump when the world or the pair recipe changes, so old builds are redone
WRITER = "reward_model.build_pairs"  # the owner named in the folder's manifest
SPLITS = ("train", "val", "test")
SPLIT_IDENTITIES = {"train": "train", "val": "train", "test": "heldout"}
MAX_PEOPLE = 3  # people per clip: 2 to this many
KINDS = tuple(DISTORTIONS)
# Shares of each pair type; the remainder after these is clean vs distorted.
MILD_SEVERE_SHARE = 0.1
STRANGER_SHARE = 0.25
OTHER_PEOPLE_SHARE = 0.05
TIE_CLEAN_SHARE = 0.1
TIE_DISTORTED_SHARE = 0.1
SEVERITY = (0.3, 1.0)  # clean vs distorted: most distortions clearly visible
MILD = (0.1, 0.4)
SEVERE_GAP = 0.4  # a severe copy is at least this much more severe than the mild one
NUISANCE_SHARE = 0.25  # pairs whose two clips get the same blur
NUISANCE_BLUR = (0.5, 1.5)  # its Gaussian sigma, in pixels


@dataclass(frozen=True)
class BuildSettings:
    num_train: int
    num_val: int
    num_test: int
    seed: int = 0
    num_frames: int = 8
    height: int = 48
    width: int = 64
    fps: float = 8.0
    reference_size: int = 32
    version: int = BUILD_VERSION


@dataclass(frozen=True)
class PairSpec:
    split: str
    index: int
    pair_type: str  # "distorted", "mild_severe", "stranger", "other_people", "tie_clean" or "tie_distorted"
    kind: str  # distortion kind ("clean" for clean ties, "stranger" / "other_people" for those pairs)


def plan_split(split: str, count: int, seed: int) -> list[PairSpec]:
    """Pair types in their shares, distortion kinds cycling within each type, order shuffled."""
    counts = {
        "mild_severe": round(count * MILD_SEVERE_SHARE),
        "stranger": round(count * STRANGER_SHARE),
        "other_people": round(count * OTHER_PEOPLE_SHARE),
        "tie_clean": round(count * TIE_CLEAN_SHARE),
        "tie_distorted": round(count * TIE_DISTORTED_SHARE),
    }
    counts = {"distorted": count - sum(counts.values()), **counts}
    if counts["distorted"] < 0:
        raise ValueError(f"{split}: {count} pairs are too few for the pair-type shares")
    fixed_kind = {"tie_clean": "clean", "stranger": "stranger", "other_people": "other_people"}
    types = [(pair_type, fixed_kind.get(pair_type) or KINDS[i % len(KINDS)])
             for pair_type, n in counts.items() for i in range(n)]
    order = np.random.default_rng([seed, SPLITS.index(split), 1]).permutation(len(types))
    return [PairSpec(split, index, *types[j]) for index, j in enumerate(order)]


def _reference_path(out_dir: Path, identity_id: int) -> Path:
    return out_dir / "references" / f"{identity_id:05d}.png"


def _ensure_reference(out_dir: Path, identity, size: int) -> None:
    path = _reference_path(out_dir, identity.id)
    if path.exists():
        return
    # Workers may draw the same person at once: each writes its own file, the rename is atomic.
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")
    write_image(temporary, render_reference(identity, size))
    os.replace(temporary, path)


def _draw_people(spec: PairSpec, seed: int) -> tuple[np.random.Generator, list]:
    """The pair's generator and its people, the generator's first draws."""
    rng = np.random.default_rng([seed, SPLITS.index(spec.split), spec.index])
    return rng, sample_identities(rng, int(rng.integers(2, MAX_PEOPLE + 1)), SPLIT_IDENTITIES[spec.split])


def _pair_files(spec: PairSpec, seed: int) -> list[str]:
    """The files make_pair writes for `spec` (its references too), known before it runs."""
    stem = f"videos/{spec.split}/{spec.index:06d}"
    references = [str(_reference_path(Path("."), p.id)) for p in _draw_people(spec, seed)[1]]
    return [f"{stem}_a.mp4", f"{stem}_b.mp4", *references]


def make_pair(spec: PairSpec, settings: BuildSettings, out_dir: Path) -> dict:
    """Render, distort and write one pair; returns its manifest row (paths relative to out_dir)."""
    rng, people = _draw_people(spec, settings.seed)
    shape = dict(num_frames=settings.num_frames, height=settings.height, width=settings.width)
    clip = sample_clip(rng, people, **shape)
    severity = severity_other = None
    if spec.pair_type == "distorted":
        severity = float(rng.uniform(*SEVERITY))
        better = clip.frames
        worse = apply_distortion(spec.kind, clip.frames, clip.boxes, severity, rng)
        severity_other, label_better, distortion = 0.0, True, spec.kind
    elif spec.pair_type == "mild_severe":
        severity_other = float(rng.uniform(*MILD))
        severity = float(rng.uniform(severity_other + SEVERE_GAP, 1.0))
        choice_seed = int(rng.integers(2**32))  # one seed: both copies hit the same people
        better = apply_distortion(spec.kind, clip.frames, clip.boxes, severity_other, np.random.default_rng(choice_seed))
        worse = apply_distortion(spec.kind, clip.frames, clip.boxes, severity, np.random.default_rng(choice_seed))
        label_better, distortion = True, spec.kind
    elif spec.pair_type == "stranger":
        changes = int(rng.integers(1, 4))
        victim = int(rng.integers(len(people)))
        others = people[:victim] + people[victim + 1 :]
        stranger = look_alike(rng, people[victim], changes, others, SPLIT_IDENTITIES[spec.split])
        scene = int(rng.integers(2**32))  # the same background and motion for both renderings
        better = sample_clip(np.random.default_rng(scene), people, **shape).frames
        worse = sample_clip(np.random.default_rng(scene), people[:victim] + [stranger] + people[victim + 1 :], **shape).frames
        severity, severity_other = face_differences(people[victim], stranger) / len(FACE_ATTRIBUTES), 0.0
        label_better, distortion = True, "stranger"
    elif spec.pair_type == "other_people":
        strangers = sample_identities(rng, len(people), SPLIT_IDENTITIES[spec.split])
        scene = int(rng.integers(2**32))
        better = sample_clip(np.random.default_rng(scene), people, **shape).frames
        worse = sample_clip(np.random.default_rng(scene), strangers, **shape).frames
        severity, severity_other, label_better, distortion = 1.0, 0.0, True, "other_people"
    else:
        other = sample_clip(rng, people, **shape)
        better, worse = clip.frames, other.frames
        label_better, distortion = False, "clean"
        if spec.pair_type == "tie_distorted":
            severity = severity_other = float(rng.uniform(*SEVERITY))
            better = apply_distortion(spec.kind, clip.frames, clip.boxes, severity, rng)
            worse = apply_distortion(spec.kind, other.frames, other.boxes, severity, rng)
            distortion = f"{spec.kind}+{spec.kind}"
    blur = float(rng.uniform(*NUISANCE_BLUR)) if rng.uniform() < NUISANCE_SHARE else 0.0
    if blur:
        better, worse = blur_frames(better, blur), blur_frames(worse, blur)
    better_is_a = bool(rng.uniform() < 0.5)
    video_a, video_b = (better, worse) if better_is_a else (worse, better)
    stem = f"videos/{spec.split}/{spec.index:06d}"
    write_video(out_dir / f"{stem}_a.mp4", video_a, settings.fps)
    write_video(out_dir / f"{stem}_b.mp4", video_b, settings.fps)
    for person in people:
        _ensure_reference(out_dir, person, settings.reference_size)
    label = ("a" if better_is_a else "b") if label_better else "tie"
    return {
        "pair_id": f"{spec.split}-{spec.index:06d}",
        "prompt": clip.prompt,
        "references": [str(_reference_path(Path("."), p.id)) for p in people],
        "video_a": f"{stem}_a.mp4",
        "video_b": f"{stem}_b.mp4",
        "label": label,
        "source": "synthetic",
        "distortion": distortion,
        "severity": severity,
        "severity_other": severity_other,
        "num_frames": settings.num_frames,
        "fps": settings.fps,
        "identity_ids": [p.id for p in people],
        "nuisance_blur": blur,
    }


def blur_frames(frames: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of every frame uint8 [T, H, W, 3] (space only)."""
    blurred = gaussian_filter(frames.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="nearest")
    return np.clip(np.round(blurred), 0, 255).astype(np.uint8)


def _make_pairs(args: tuple[list[PairSpec], BuildSettings, Path]) -> list[dict]:
    specs, settings, out_dir = args
    return [make_pair(spec, settings, out_dir) for spec in specs]


def check_build(out_dir: str | Path, settings: BuildSettings, workers: int = 1) -> OwnedFolder:
    """The output folder, claimed; BuildRefused, before anything is changed, for an argument the
    build cannot use or a folder holding files this builder did not write."""
    for name in ("num_train", "num_val", "num_test", "num_frames", "height", "width", "reference_size", "seed"):
        value, least = getattr(settings, name), 0 if name == "seed" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise BuildRefused(f"{name} must be an integer >= {least}, got {value!r}")
    if not (math.isfinite(settings.fps) and settings.fps > 0):
        raise BuildRefused(f"fps must be a number > 0, got {settings.fps}")
    if not isinstance(workers, int) or workers < 1:
        raise BuildRefused(f"workers must be an integer >= 1, got {workers!r}")
    try:
        scale_range(MAX_PEOPLE, settings.height, settings.width)  # the world's own size rule
    except ValueError as error:
        raise BuildRefused(f"height x width: {error}") from None
    return claim(out_dir, WRITER)


def build_synthetic_pairs(
    out_dir: str | Path, num_train: int, num_val: int, num_test: int, seed: int = 0, num_frames: int = 8,
    height: int = 48, width: int = 64, fps: float = 8.0, reference_size: int = 32, workers: int = 2,
    progress: bool = True,
) -> dict[str, Path]:
    """Build (or find already built) the synthetic pairs; returns split -> manifest path."""
    out_dir = Path(out_dir)
    settings = BuildSettings(num_train, num_val, num_test, seed, num_frames, height, width, float(fps), reference_size)
    folder = check_build(out_dir, settings, workers)
    manifests = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    if folder.complete and folder.settings == asdict(settings) and folder.intact(folder.listed()):
        return manifests
    folder.remove(folder.listed())  # what an earlier (other or unfinished) build left; nothing else
    folder.begin(asdict(settings))
    counts = dict(zip(SPLITS, (num_train, num_val, num_test)))
    specs = [spec for split in SPLITS for spec in plan_split(split, counts[split], seed)]
    written = sorted({path for spec in specs for path in _pair_files(spec, seed)})
    folder.plan(written)
    chunks = [specs[i : i + 32] for i in range(0, len(specs), 32)]
    bar = tqdm(total=len(specs), desc="building synthetic pairs", unit="pair", disable=not progress)
    rows: list[dict] = []
    jobs = [(chunk, settings, out_dir) for chunk in chunks]
    if workers <= 1:
        for job in jobs:
            rows += _make_pairs(job)
            bar.update(len(job[0]))
    else:
        # spawn: safe even when the caller has already started threads (torch, accelerate)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for job, chunk_rows in zip(jobs, pool.map(_make_pairs, jobs)):
                rows += chunk_rows
                bar.update(len(job[0]))
    bar.close()
    folder.record(written)
    by_split = {split: [row for row in rows if row["pair_id"].startswith(f"{split}-")] for split in SPLITS}
    folder.write({f"{split}.jsonl": partial(write_pairs, rows=by_split[split]) for split in SPLITS})
    folder.finish()  # last: marks the build complete
    return manifests


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/synthetic/pairs", help="output folder")
    parser.add_argument("--train", type=int, default=3000, help="training pairs")
    parser.add_argument("--val", type=int, default=200, help="validation pairs")
    parser.add_argument("--test", type=int, default=400, help="test pairs (held-out identities)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--reference-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        manifests = build_synthetic_pairs(
            args.out, args.train, args.val, args.test, seed=args.seed, num_frames=args.num_frames, height=args.height,
            width=args.width, fps=args.fps, reference_size=args.reference_size, workers=args.workers,
        )
    except BuildRefused as error:
        print(f"build_pairs: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    total = args.train + args.val + args.test
    print(f"{total} pairs in {args.out} ({time.perf_counter() - start:.1f} s): "
          + ", ".join(f"{split} {path}" for split, path in manifests.items()))
    return manifests


if __name__ == "__main__":
    main()
