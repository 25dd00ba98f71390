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
the settings, the video file and its references are unchanged. Every file written is listed in
the folder's build manifest (identity_grpo.core.owned_folder): a folder holding other files is
refused, and a clip that is redone loses its own old files, never anyone else's.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from reward_model.clip_pairs import make_clip_pairs
from reward_model.face_tracks import DetectedFace, FaceTrack, people_tracks, sharpest_face, track_faces
from identity_grpo.core.config_io import ConfigError
from identity_grpo.core.owned_folder import BuildRefused, OwnedFolder, claim
from identity_grpo.faces.analyzer import FaceModelsMissing, FaceNotFound
from identity_grpo.faces.identity_metrics import DEFAULT_LINK_IOU, DEFAULT_LINK_SIMILARITY, match_faces
from reward_model.pairs import write_pairs
from identity_grpo.core.video import VideoReadError, read_image, read_video, write_image, write_video

VERSION = 1  # bump when the recipe changes, so that recorded clips are redone
WRITER = "reward_model.real_pairs"  # the owner named in the folder's manifest
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


def clip_pairs(video: Path, detector: FaceDetector, settings: RealPairSettings,
               references: list[Path]) -> tuple[list[dict], dict]:
    """Track and distort one clip: its manifest rows and its files (relative path -> how to write
    it; OwnedFolder.write), or ClipSkipped."""
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
    reference_paths = [refs / f"person{p}.png" for p in range(len(tracks))]
    outputs = {}
    for p, (path, track) in enumerate(zip(reference_paths, tracks)):
        image = read_image(references[p]) if references else sharpest_face(frames, track, settings.reference_margin)
        outputs[path] = partial(write_image, image=image)
    outputs[videos / "clean.mp4"] = partial(write_video, frames=frames, fps=settings.fps)
    outputs[videos / "boxes.npy"] = partial(np.save, arr=boxes.astype(np.float32))
    caption = video.with_suffix(".txt")
    prompt = caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""

    rng = np.random.default_rng([settings.seed, zlib.crc32(stem.encode())])
    rows = []
    for index, pair in enumerate(make_clip_pairs(frames, boxes, settings.pairs_per_clip, rng)):
        better_is_a = bool(rng.uniform() < 0.5)
        worse_path = videos / f"pair{index:02d}_{'b' if better_is_a else 'a'}.mp4"
        outputs[worse_path] = partial(write_video, frames=pair.worse, fps=settings.fps)
        better_path = videos / "clean.mp4"
        if pair.better is not None:
            better_path = videos / f"pair{index:02d}_{'a' if better_is_a else 'b'}.mp4"
            outputs[better_path] = partial(write_video, frames=pair.better, fps=settings.fps)
        video_a, video_b = (better_path, worse_path) if better_is_a else (worse_path, better_path)
        rows.append({
            "pair_id": f"{stem}-{index:02d}", "prompt": prompt, "references": [str(p) for p in reference_paths],
            "video_a": str(video_a), "video_b": str(video_b), "label": "a" if better_is_a else "b",
            "source": "synthetic", "distortion": pair.kind, "severity": pair.severity,
            "severity_other": pair.severity_other, "num_frames": len(frames), "fps": settings.fps, "clip": stem,
        })  # fmt: skip
    return rows, outputs


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


def _recorded(record_path: str, key: dict, folder: OwnedFolder) -> dict | None:
    """The clip's earlier outcome if it was made with `key` and its files are all still as written."""
    try:
        record = json.loads((folder.root / record_path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("key") != key:
        return None
    files = [f for row in record["rows"] for f in (row["video_a"], row["video_b"], *row["references"])]
    return record if folder.intact([record_path, *files]) else None


def _write_json(data: dict, path: Path, indent: int = 2) -> None:
    path.write_text(json.dumps(data, indent=indent) + "\n")


def check_build(videos_dir: str | Path, out_dir: str | Path, settings: RealPairSettings,
                references_dir: str | Path | None = None) -> tuple[list[Path], OwnedFolder]:
    """The videos to use and the claimed output folder; BuildRefused, before anything is changed,
    for an argument the build cannot use or a folder holding files this builder did not write."""
    s = settings
    for name, ok, rule in (
        ("pairs_per_clip", _is_int(s.pairs_per_clip, 1), "an integer >= 1"),
        ("seed", _is_int(s.seed, 0), "an integer >= 0"),
        ("fps", _is_number(s.fps) and s.fps > 0, "a number > 0"),
        ("max_pixels", _is_int(s.max_pixels, 1), "an integer >= 1"),
        ("min_frames", _is_int(s.min_frames, 1), "an integer >= 1"),
        ("min_coverage", _is_number(s.min_coverage) and 0.5 < s.min_coverage <= 1, "a number in (0.5, 1]"),
        ("link_similarity", _is_number(s.link_similarity) and -1 <= s.link_similarity <= 1, "a number in [-1, 1]"),
        ("link_iou", _is_number(s.link_iou) and 0 <= s.link_iou <= 1, "a number in [0, 1]"),
        ("reference_margin", _is_number(s.reference_margin) and s.reference_margin >= 0, "a number >= 0"),
    ):
        if not ok:
            raise BuildRefused(f"{name} must be {rule}, got {getattr(s, name)!r}")
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise BuildRefused(f"--videos: folder not found: {videos_dir}")
    if references_dir is not None and not Path(references_dir).is_dir():
        raise BuildRefused(f"--references: folder not found: {references_dir}")
    videos = sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    stems = Counter(v.stem for v in videos)
    shared = [stem for stem, n in stems.items() if n > 1]
    if shared:
        raise BuildRefused(f"--videos: clips must have distinct names (before the suffix); these share one: {shared}")
    return videos, claim(out_dir, WRITER)


def _is_int(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_real_pairs(videos_dir: str | Path, out_dir: str | Path, detector: FaceDetector,
                     settings: RealPairSettings, references_dir: str | Path | None = None,
                     progress: bool = True) -> dict:
    """Pairs from every video in videos_dir -> out_dir/pairs.jsonl; returns the summary (also summary.json)."""
    videos, folder = check_build(videos_dir, out_dir, settings, references_dir)
    folder.begin({"settings": asdict(settings), "videos": str(videos_dir),
                  "references": None if references_dir is None else str(references_dir)})
    rows, skipped = [], Counter()
    bar = tqdm(videos, desc="real pairs", unit="clip", disable=not progress)
    for video in bar:
        references = _references_of(video, references_dir)
        key = {"settings": asdict(settings), "video": _file_key(video), "references": [_file_key(r) for r in references]}
        record_path = f"clips/{video.stem}.json"
        record = _recorded(record_path, key, folder)
        if record is None:
            # What an earlier, other build of this clip left, even if the clip is now skipped.
            folder.remove(folder.listed(f"videos/{video.stem}/", f"references/{video.stem}/", record_path))
            try:
                clip_rows, outputs = clip_pairs(video, detector, settings, references)
                record = {"key": key, "rows": clip_rows, "skipped": None}
            except ClipSkipped as skip:
                outputs, record = {}, {"key": key, "rows": [], "skipped": skip.reason}
            outputs[record_path] = partial(_write_json, record, indent=1)  # written last: marks the clip done
            folder.write(outputs)
        rows += record["rows"]
        if record["skipped"]:
            skipped[record["skipped"]] += 1
        bar.set_postfix(pairs=len(rows), skipped=sum(skipped.values()))
    summary = {"videos": len(videos), "used": len(videos) - sum(skipped.values()), "pairs": len(rows),
               "skipped": dict(sorted(skipped.items())), "manifest": str(folder.root / "pairs.jsonl")}
    folder.write({"pairs.jsonl": partial(write_pairs, rows=rows), "summary.json": partial(_write_json, summary)})
    folder.finish()
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
    faces = FaceAnalyzerConfig(pack=args.face_pack, root=args.face_root, providers=args.providers,
                               det_size=args.det_size, det_thresh=args.det_thresh)
    settings = RealPairSettings(args.pairs_per_clip, args.seed, args.fps, args.max_pixels, args.min_frames,
                                args.min_coverage, faces=asdict(faces))
    try:  # every argument and the output folder before the face models load
        faces.validate()
        check_build(args.videos, args.out, settings, args.references)
        summary = build_real_pairs(args.videos, args.out, FaceAnalyzer(faces), settings, args.references)
    except (BuildRefused, ConfigError, FaceModelsMissing) as error:
        print(f"real_pairs: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    reasons = ", ".join(f"{reason} {n}" for reason, n in summary["skipped"].items()) or "none"
    print(f"{summary['pairs']} pairs from {summary['used']} of {summary['videos']} clips -> {summary['manifest']}; "
          f"skipped: {reasons}")
    return summary


if __name__ == "__main__":
    main()
