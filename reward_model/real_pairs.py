"""Build preference pairs from real multi-person videos: track every face, distort, write.

    python -m reward_model.real_pairs --videos DIR --out DIR [--references DIR] \
        [--face-root ~/.insightface --face-pack antelopev2 --providers CPUExecutionProvider] \
        [--pairs-per-clip 4 --seed 0]

Each video in --videos (mp4, mov, mkv, avi, webm) is read at --fps; faces are detected in every
frame (insightface) and linked into one box track per person (reward_model.face_tracks); a
track must be detected in --min-coverage of the frames, and a clip must show 1-4 people. The
clean clip and distorted copies (reward_model.clip_pairs, the stage-1 operators driven by the
per-frame boxes [T, P, 4]) are written as mp4, with one reference per person: the images in
--references/<clip stem>/ (sorted by name, matched to the tracks by likeness) when given, else
a crop of the person's sharpest face. A caption in <clip stem>.txt next to a video is its
prompt. pairs.jsonl has the synthetic builder's schema (reward_model.pairs) plus `clip`.
Unusable clips are skipped and counted by reason in summary.json.

Re-running is cheap: each clip's outcome is recorded last in clips/<stem>.json and reused while
the settings, the video file and its references are unchanged.
"""
from __future__ import annotations

import argparse
import json
import shutil
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from reward_model.clip_pairs import make_clip_pairs
from reward_model.face_tracks import DetectedFace, FaceTrack, people_tracks, sharpest_face, track_faces
from identity_grpo.faces.analyzer import FaceNotFound
from identity_grpo.faces.identity_metrics import DEFAULT_LINK_IOU, DEFAULT_LINK_SIMILARITY, match_faces
from reward_model.pairs import write_pairs
from identity_grpo.core.video import VideoReadError, read_image, read_video, write_image, write_video

VERSION = 1  # bump when the recipe changes, so that recorded clips are redone
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_PEOPLE = 4


class FaceDetector(Protocol):
    """What the builder needs of identity_grpo.faces.analyzer.FaceAnalyzer."""

    def detect(self, frames: np.ndarray) -> list[list[DetectedFace]]: ...  # uint8 [T, H, W, 3] -> faces per frame

    def embed_references(self, images: Sequence[Path]) -> np.ndarray: ...  # -> [R, D], the largest face of each


@dataclass
class RealPairSettings:
    pairs_per_clip: int = 4
    seed: int = 0
    fps: float = 8.0  # frames are read (and written) at this rate
    max_pixels: int = 480 * 832  # frames are scaled down, aspect kept, to at most this many pixels
    min_frames: int = 8  # shorter clips are skipped
    min_coverage: float = 0.8  # a person's track must be detected in this fraction of the frames
    link_similarity: float = DEFAULT_LINK_SIMILARITY  # see reward_model.face_tracks
    link_iou: float = DEFAULT_LINK_IOU
    reference_margin: float = 0.3  # cropped references: the face box widened by this much per side
    faces: dict = field(default_factory=dict)  # the face models' settings: other models redo every clip
    version: int = VERSION


class ClipSkipped(Exception):
    """A clip that gives no pairs; `reason` is what summary.json counts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def pair_rows(video: Path, out_dir: Path, detector: FaceDetector, settings: RealPairSettings,
              references: list[Path]) -> list[dict]:
    """Track, distort and write one clip; its manifest rows (paths relative to out_dir), or ClipSkipped."""
    try:
        frames = read_video(video, fps=settings.fps, max_pixels=settings.max_pixels)
    except VideoReadError:
        raise ClipSkipped("unreadable") from None
    if len(frames) < settings.min_frames:
        raise ClipSkipped("too_short")
    frame_faces = detector.detect(frames)
    if not any(frame_faces):
        raise ClipSkipped("no_faces")
    tracks = track_faces(frame_faces, settings.link_similarity, settings.link_iou)
    tracks = people_tracks(tracks, len(frames), settings.min_coverage)
    if not tracks:
        raise ClipSkipped("people_lost")
    if references:
        tracks = tracks_of_references(detector, references, tracks)
    if len(tracks) > MAX_PEOPLE:
        raise ClipSkipped("too_many_people")
    boxes = np.stack([track.box_per_frame(len(frames)) for track in tracks], axis=1)  # [T, P, 4]

    stem = video.stem
    videos, refs = Path("videos") / stem, Path("references") / stem
    for folder in (videos, refs):  # what an earlier, other build of this clip left
        shutil.rmtree(out_dir / folder, ignore_errors=True)
    reference_paths = [refs / f"person{p}.png" for p in range(len(tracks))]
    for p, (path, track) in enumerate(zip(reference_paths, tracks)):
        image = read_image(references[p]) if references else sharpest_face(frames, track, settings.reference_margin)
        write_image(out_dir / path, image)
    write_video(out_dir / videos / "clean.mp4", frames, settings.fps)
    np.save(out_dir / videos / "boxes.npy", boxes.astype(np.float32))
    caption = video.with_suffix(".txt")
    prompt = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""

    rng = np.random.default_rng([settings.seed, zlib.crc32(stem.encode())])
    rows = []
    for index, pair in enumerate(make_clip_pairs(frames, boxes, settings.pairs_per_clip, rng)):
        better_is_a = bool(rng.uniform() < 0.5)
        worse_path = videos / f"pair{index:02d}_{'b' if better_is_a else 'a'}.mp4"
        write_video(out_dir / worse_path, pair.worse, settings.fps)
        better_path = videos / "clean.mp4"
        if pair.better is not None:
            better_path = videos / f"pair{index:02d}_{'a' if better_is_a else 'b'}.mp4"
            write_video(out_dir / better_path, pair.better, settings.fps)
        video_a, video_b = (better_path, worse_path) if better_is_a else (worse_path, better_path)
        rows.append({
            "pair_id": f"{stem}-{index:02d}", "prompt": prompt, "references": [str(p) for p in reference_paths],
            "video_a": str(video_a), "video_b": str(video_b), "label": "a" if better_is_a else "b",
            "source": "synthetic", "distortion": pair.kind, "severity": pair.severity,
            "severity_other": pair.severity_other, "num_frames": len(frames), "fps": settings.fps, "clip": stem,
        })  # fmt: skip
    return rows


def tracks_of_references(detector: FaceDetector, references: list[Path], tracks: list[FaceTrack]) -> list[FaceTrack]:
    """The track of each reference's person, in reference order (optimal matching by likeness)."""
    try:
        wanted = detector.embed_references(references)
    except FaceNotFound:
        raise ClipSkipped("reference_without_face") from None
    assignment = match_faces(np.stack([t.mean_embedding() for t in tracks]), wanted)
    if (assignment.face_of_person < 0).any():
        raise ClipSkipped("reference_not_found")
    return [tracks[k] for k in assignment.face_of_person]


def _references_of(video: Path, references_dir: str | Path | None) -> list[Path]:
    """The images in references_dir/<clip stem>/, by name; none: references are cropped from the clip."""
    folder = Path(references_dir) / video.stem if references_dir else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _file_key(path: Path) -> list:
    stat = path.stat()
    return [path.name, stat.st_size, stat.st_mtime_ns]


def _recorded(record_path: Path, key: dict, out_dir: Path) -> dict | None:
    """The clip's earlier outcome if it was made with `key` and its files are all still there."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("key") != key:
        return None
    files = [f for row in record["rows"] for f in (row["video_a"], row["video_b"], *row["references"])]
    return record if all((out_dir / f).is_file() for f in files) else None


def build_real_pairs(videos_dir: str | Path, out_dir: str | Path, detector: FaceDetector,
                     settings: RealPairSettings, references_dir: str | Path | None = None,
                     progress: bool = True) -> dict:
    """Pairs from every video in videos_dir -> out_dir/pairs.jsonl; returns the summary (also summary.json)."""
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"--videos: folder not found: {videos_dir}")
    if references_dir is not None and not Path(references_dir).is_dir():
        raise FileNotFoundError(f"--references: folder not found: {references_dir}")
    videos = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    stems = Counter(v.stem for v in videos)
    if any(n > 1 for n in stems.values()):
        shared = [stem for stem, n in stems.items() if n > 1]
        raise ValueError(f"--videos: clips must have distinct names (before the suffix); these share one: {shared}")
    rows, skipped = [], Counter()
    bar = tqdm(videos, desc="real pairs", unit="clip", disable=not progress)
    for video in bar:
        references = _references_of(video, references_dir)
        key = {"settings": asdict(settings), "video": _file_key(video), "references": [_file_key(r) for r in references]}
        record_path = out_dir / "clips" / f"{video.stem}.json"
        record = _recorded(record_path, key, out_dir)
        if record is None:
            try:
                record = {"key": key, "rows": pair_rows(video, out_dir, detector, settings, references), "skipped": None}
            except ClipSkipped as skip:
                record = {"key": key, "rows": [], "skipped": skip.reason}
            record_path.parent.mkdir(parents=True, exist_ok=True)
            record_path.write_text(json.dumps(record, indent=1) + "\n")  # last: marks the clip done
        rows += record["rows"]
        if record["skipped"]:
            skipped[record["skipped"]] += 1
        bar.set_postfix(pairs=len(rows), skipped=sum(skipped.values()))
    write_pairs(out_dir / "pairs.jsonl", rows)
    summary = {"videos": len(videos), "used": len(videos) - sum(skipped.values()), "pairs": len(rows),
               "skipped": dict(sorted(skipped.items())), "manifest": str(out_dir / "pairs.jsonl")}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> dict:
    from identity_grpo.faces.analyzer import FaceAnalyzer, FaceAnalyzerConfig

    defaults = RealPairSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, help="folder of multi-person clips")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--references", help="folder with <clip stem>/*.png: one image per person of that clip")
    parser.add_argument("--face-root", default=FaceAnalyzerConfig.root, help="folder holding models/<pack>/")
    parser.add_argument("--face-pack", default=FaceAnalyzerConfig.pack, help="insightface model pack")
    parser.add_argument("--providers", nargs="*", default=[], help="onnxruntime providers (default: CUDA if any, CPU)")
    parser.add_argument("--det-size", nargs=2, type=int, default=[640, 640], metavar=("W", "H"))
    parser.add_argument("--det-thresh", type=float, default=FaceAnalyzerConfig.det_thresh)
    parser.add_argument("--pairs-per-clip", type=int, default=defaults.pairs_per_clip)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--fps", type=float, default=defaults.fps)
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels)
    parser.add_argument("--min-frames", type=int, default=defaults.min_frames)
    parser.add_argument("--min-coverage", type=float, default=defaults.min_coverage)
    args = parser.parse_args(argv)
    if args.pairs_per_clip < 1 or args.fps <= 0 or args.min_frames < 1 or not 0.5 < args.min_coverage <= 1:
        parser.error("need --pairs-per-clip >= 1, --fps > 0, --min-frames >= 1 and --min-coverage in (0.5, 1]")
    faces = FaceAnalyzerConfig(pack=args.face_pack, root=args.face_root, providers=args.providers,
                               det_size=args.det_size, det_thresh=args.det_thresh)
    settings = RealPairSettings(args.pairs_per_clip, args.seed, args.fps, args.max_pixels, args.min_frames,
                                args.min_coverage, faces=asdict(faces))
    summary = build_real_pairs(args.videos, args.out, FaceAnalyzer(faces), settings, args.references)
    reasons = ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items()) or "none"
    print(f"{summary['pairs']} pairs from {summary['used']} of {summary['videos']} clips -> {summary['manifest']}; "
          f"skipped: {reasons}")
    return summary


if __name__ == "__main__":
    main()
