"""Face tracks and pairs from real video files (reward_model.face_tracks, clip_pairs, real_pairs).

The builder runs on mp4 files written here: two coloured squares ("people") move across a
gradient background. A detector the test controls (a face wherever one of the known colours
covers pixels, embedded as that colour's vector) makes the expected tracks exact; one last test
runs the command line with the tiny ONNX insightface pack of tests/face_models_support.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from face_models_support import CELL, paint_faces, recognizer_weight, write_pack
from reward_model.clip_pairs import make_clip_pairs
from identity_grpo.world.distortions import box_region
from reward_model.face_tracks import people_tracks, track_faces
from identity_grpo.faces.analyzer import Face, FaceNotFound
from reward_model.pairs import load_pairs
from reward_model.real_pairs import RealPairSettings, build_real_pairs, main
from identity_grpo.core.owned_folder import MANIFEST
from identity_grpo.core.video import read_image, read_video, write_image, write_video
from tests_support import folder_contents, make_user_folder

RED, BLUE, GREEN = (220, 60, 40), (40, 80, 220), (60, 200, 60)
EMBEDDINGS = {colour: np.eye(8, dtype=np.float32)[i] for i, colour in enumerate((RED, BLUE, GREEN))}
H, W, T, SIDE = 64, 96, 12, 16


def face(box, embedding) -> SimpleNamespace:
    return SimpleNamespace(box=np.asarray(box, np.float64), embedding=np.asarray(embedding, np.float64))


class ColourFaces:
    """Detector stand-in with FaceAnalyzer's interface: a face where a known colour covers >= 20 pixels."""

    embedding_dim = 8

    def detect(self, frames: np.ndarray) -> list[list[Face]]:
        return [self.faces(frame) for frame in frames]

    def faces(self, frame: np.ndarray) -> list[Face]:
        found = []
        for colour, embedding in EMBEDDINGS.items():
            rows, cols = np.nonzero(np.abs(frame.astype(int) - colour).max(axis=-1) < 40)
            if len(rows) >= 20:
                box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
                found.append(Face(box, 1.0, np.zeros((5, 2), np.float32), embedding))
        return found

    def embed_references(self, images) -> np.ndarray:
        embeddings = []
        for image in images:
            faces = self.faces(read_image(image))
            if not faces:
                raise FaceNotFound(f"{image}: no face found")
            embeddings.append(faces[0].embedding)
        return np.stack(embeddings)


def positions(t: int) -> dict:
    """Top-left corners at frame t: RED moves right along the top, BLUE left along the bottom."""
    return {RED: (4 + 6 * t, 8), BLUE: (76 - 6 * t, 40)}


def two_people_clip(hidden: tuple[tuple, int] | None = None) -> np.ndarray:
    """[T, H, W, 3] uint8; `hidden` = (colour, frame) leaves that person out of that frame."""
    background = np.broadcast_to(np.linspace(20, 120, W)[None, :, None], (H, W, 3))
    frames = np.repeat(background[None], T, axis=0).astype(np.uint8)
    for t in range(T):
        for colour, (x, y) in positions(t).items():
            if hidden != (colour, t):
                frames[t, y : y + SIDE, x : x + SIDE] = colour
    return frames


def expected_box(colour, t) -> np.ndarray:
    x, y = positions(t)[colour]
    return np.array([x, y, x + SIDE, y + SIDE], np.float64)


# --- tracking ---------------------------------------------------------------------------------------------


def test_tracks_keep_identity_when_people_jump_across_each_other():
    a, b = [1.0, 0.0], [0.0, 1.0]
    left, right = [0, 0, 10, 10], [30, 0, 40, 10]
    # Frame 1: the two trade places in one jump, so each box overlaps the *other* person's last box.
    frames = [[face(left, a), face(right, b)], [face(left, b), face(right, a)], [face(right, a)]]
    tracks = track_faces(frames)
    assert [t.frames for t in tracks] == [[0, 1, 2], [0, 1]]
    np.testing.assert_array_equal([t.mean_embedding() for t in tracks], [a, b])
    np.testing.assert_array_equal(tracks[0].boxes[1], right)


def test_overlap_links_a_wavering_face_but_not_a_stranger():
    a = np.array([1.0, 0.0, 0.0])
    profile = np.array([0.3, np.sqrt(1 - 0.09), 0.0])  # cosine 0.3 to a: below link_similarity, above 0.2
    stranger = np.array([0.1, 0.0, np.sqrt(1 - 0.01)])  # cosine 0.1: someone else
    box, moved = [0, 0, 10, 10], [2, 0, 12, 10]  # IoU 8/12
    assert len(track_faces([[face(box, a)], [face(moved, profile)]])) == 1
    assert len(track_faces([[face(box, a)], [face(moved, stranger)]])) == 2
    # Without the frame in between the box overlap no longer counts: the profile starts its own track.
    assert len(track_faces([[face(box, a)], [], [face(moved, profile)]])) == 2


def test_people_are_tracks_covering_enough_frames_left_to_right_with_gaps_filled():
    right, left, passer = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
    frames = []
    for t in range(10):
        faces = [face([60, 0, 70, 10], right)]
        if t not in (3, 4):  # the left person is missed twice: 8 of 10 frames
            faces.append(face([t, 0, t + 10, 10], left))
        if t < 2:
            faces.append(face([30, 30, 40, 40], passer))
        frames.append(faces)
    tracks = people_tracks(track_faces(frames), num_frames=10, min_coverage=0.8)
    np.testing.assert_array_equal([t.mean_embedding() for t in tracks], [left, right])
    boxes = tracks[0].box_per_frame(10)
    np.testing.assert_allclose(boxes, [[t, 0, t + 10, 10] for t in range(10)])  # frames 3, 4 interpolated
    [only] = people_tracks(track_faces(frames), num_frames=10, min_coverage=0.9)
    np.testing.assert_array_equal(only.mean_embedding(), right)


def test_tracks_follow_the_people_of_a_decoded_mp4(tmp_path):
    write_video(tmp_path / "clip.mp4", two_people_clip(hidden=(BLUE, 5)), fps=8)
    frames = read_video(tmp_path / "clip.mp4")
    tracks = people_tracks(track_faces(ColourFaces().detect(frames)), len(frames), min_coverage=0.8)
    assert len(tracks) == 2
    for track, colour in zip(tracks, (RED, BLUE)):  # mean box centres x 45 and ~51: RED is left
        np.testing.assert_array_equal(track.mean_embedding(), EMBEDDINGS[colour])
        expected = np.stack([expected_box(colour, t) for t in range(T)])
        np.testing.assert_allclose(track.box_per_frame(T), expected, atol=1.5)  # codec edges; frame 5 interpolated
    assert 5 not in tracks[1].frames


# --- pairs ------------------------------------------------------------------------------------------------


def test_distorted_copies_change_only_the_face_boxes():
    frames = two_people_clip()
    boxes = np.stack([[expected_box(RED, t), expected_box(BLUE, t)] for t in range(T)])
    pairs = make_clip_pairs(frames, boxes, count=12, rng=np.random.default_rng(0))
    inside = np.zeros(frames.shape[:3], bool)
    for t in range(T):
        for box in boxes[t]:
            r0, r1, c0, c1 = box_region(box, H, W)
            inside[t, r0:r1, c0:c1] = True
    assert {p.kind for p in pairs} == {"swap", "drift", "blend", "duplicate", "flicker", "degrade"}
    assert any(p.better is not None for p in pairs)  # a mild vs severe pair among them
    for pair in pairs:
        for clip in (pair.worse, pair.better):
            if clip is not None:
                np.testing.assert_array_equal(clip[~inside], frames[~inside])
        assert np.abs(pair.worse.astype(int) - frames)[inside].max() > 20
        assert pair.severity > pair.severity_other


def write_clips(folder: Path) -> None:
    write_video(folder / "two_people.mp4", two_people_clip(hidden=(BLUE, 5)), fps=8)
    (folder / "two_people.txt").write_text("two people cross a room\n")
    write_video(folder / "empty.mp4", np.full((T, H, W, 3), 90, np.uint8), fps=8)
    write_video(folder / "short.mp4", two_people_clip()[:3], fps=8)
    (folder / "broken.mp4").write_bytes(b"not a video")


def test_builder_writes_a_loadable_manifest_and_counts_skipped_clips(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "out"
    write_clips(videos)
    settings = RealPairSettings(pairs_per_clip=6, faces={"detector": "colour"})
    summary = build_real_pairs(videos, out, ColourFaces(), settings, progress=False)
    assert summary == {"videos": 4, "used": 1, "pairs": 6, "manifest": str(out / "pairs.jsonl"),
                       "skipped": {"no_faces": 1, "too_short": 1, "unreadable": 1}}
    assert json.loads((out / "summary.json").read_text()) == summary

    pairs = load_pairs(out / "pairs.jsonl", check_files=True)
    assert len(pairs) == 6 and set(pairs["source"]) == {"synthetic"} and set(pairs["clip"]) == {"two_people"}
    assert set(pairs["prompt"]) == {"two people cross a room"} and set(pairs["num_frames"]) == {T}
    references = pairs[0]["references"]
    for path, colour in zip(references, (RED, BLUE)):  # cropped from the clip, people left to right
        image = read_image(path)
        np.testing.assert_allclose(image[image.shape[0] // 2, image.shape[1] // 2], colour, atol=12)

    clean = read_video(out / "videos/two_people/clean.mp4").astype(int)
    boxes = np.load(out / "videos/two_people/boxes.npy")
    np.testing.assert_allclose(boxes[:, 1], [expected_box(BLUE, t) for t in range(T)], atol=1.5)
    near_a_box = np.zeros(clean.shape[:3], bool)
    for t in range(T):
        for box in boxes[t]:  # widened by 8 px: the codec spreads a change over its 8x8 blocks
            r0, r1, c0, c1 = box_region(box + [-8, -8, 8, 8], H, W)
            near_a_box[t, r0:r1, c0:c1] = True
    for row in pairs:
        change = {}
        for side in ("a", "b"):
            difference = np.abs(read_video(row[f"video_{side}"]).astype(int) - clean)
            change[side] = difference.mean()
            if not row[f"video_{side}"].endswith("clean.mp4"):
                # Outside: codec noise only (a few grey levels); inside: faces moved or degraded.
                assert difference[~near_a_box].max() <= 10, row["pair_id"]
                assert difference[near_a_box].max() > 60, row["pair_id"]
        better, worse = (("a", "b") if row["label"] == "a" else ("b", "a"))
        assert change[better] < change[worse]  # the clip labelled better is the less distorted one
        if row["severity_other"] == 0.0:
            assert row[f"video_{better}"].endswith("clean.mp4")


def test_given_references_order_the_people_and_a_rerun_changes_nothing(tmp_path):
    videos, out, refs = tmp_path / "videos", tmp_path / "out", tmp_path / "refs"
    write_clips(videos)
    # Named so that BLUE comes first; a third person (GREEN) is not in the clip.
    write_image(refs / "two_people" / "1_blue.png", paint_faces(CELL, CELL, [(0, 0, BLUE)]))
    write_image(refs / "two_people" / "2_red.png", paint_faces(CELL, CELL, [(0, 0, RED)]))
    settings = RealPairSettings(pairs_per_clip=2, faces={"detector": "colour"})
    build_real_pairs(videos, out, ColourFaces(), settings, references_dir=refs, progress=False)
    row = load_pairs(out / "pairs.jsonl")[0]
    assert [read_image(p)[0, 0].tolist() for p in row["references"]] == [list(BLUE), list(RED)]
    np.testing.assert_allclose(np.load(out / "videos/two_people/boxes.npy")[0], [expected_box(BLUE, 0),
                                                                               expected_box(RED, 0)], atol=1.5)

    manifest = (out / "pairs.jsonl").read_text()
    rewritten = ("pairs.jsonl", "summary.json", MANIFEST)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in rewritten}

    class NoDetector(ColourFaces):
        def detect(self, frames):
            raise AssertionError("a re-run with the same settings must not detect again")

    build_real_pairs(videos, out, NoDetector(), settings, references_dir=refs, progress=False)
    assert (out / "pairs.jsonl").read_text() == manifest
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    write_image(refs / "two_people" / "3_green.png", paint_faces(CELL, CELL, [(0, 0, GREEN)]))
    summary = build_real_pairs(videos, out, ColourFaces(), settings, references_dir=refs, progress=False)
    assert summary["skipped"]["reference_not_found"] == 1 and summary["pairs"] == 0


def test_a_rebuild_with_other_settings_removes_its_own_old_files_only(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "out"
    write_video(videos / "two_people.mp4", two_people_clip(), fps=8)
    build_real_pairs(videos, out, ColourFaces(), RealPairSettings(pairs_per_clip=6, faces={"detector": "colour"}),
                     progress=False)
    (out / "videos" / "two_people" / "notes.txt").write_text("mine")  # a user's files, placed after the build
    (out / "mine.txt").write_text("mine too")
    old = set(json.loads((out / MANIFEST).read_text())["files"])
    build_real_pairs(videos, out, ColourFaces(), RealPairSettings(pairs_per_clip=2, faces={"detector": "colour"}),
                     progress=False)
    record = json.loads((out / MANIFEST).read_text())
    assert record["writer"] == "reward_model.real_pairs" and record["complete"]
    assert any(path.startswith("videos/two_people/pair05") for path in old - set(record["files"]))
    assert set(folder_contents(out)) == set(record["files"]) | {MANIFEST, "videos/two_people/notes.txt", "mine.txt"}
    assert all(len(folder_contents(out)[path]) == size for path, size in record["files"].items())
    assert len(load_pairs(out / "pairs.jsonl", check_files=True)) == 2


def test_a_folder_of_someone_elses_files_is_refused_before_the_face_models_load(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    before = make_user_folder(tmp_path / "out")
    with pytest.raises(SystemExit) as exit_:  # --face-root holds no models: refused before they would load
        main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--face-root", str(tmp_path)])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and len(error.strip().splitlines()) == 1
    assert str(tmp_path / "out") in error and "did not write" in error
    assert folder_contents(tmp_path / "out") == before


@pytest.mark.parametrize("args", [["--pairs-per-clip", "-5"], ["--fps", "0"], ["--min-coverage", "0.3"],
                                  ["--seed", "-1"], ["--max-pixels", "0"], ["--references", "missing"],
                                  ["--det-size", "100", "100"], ["--videos", "missing"]])
def test_bad_arguments_are_one_line_and_change_nothing(tmp_path, args, capsys):
    (tmp_path / "videos").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "--face-root", str(tmp_path),
              *args])
    assert exit_.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_command_line_with_an_insightface_pack(tmp_path, capsys):
    write_pack(tmp_path / "insightface" / "models" / "tiny", recognizer_weight())
    # Grid-aligned people (the tiny detector's cells) that jump a whole cell: no box overlap
    # between frames, so only the embeddings can link the tracks.
    red_x, blue_x = [0, 0, 0, 0, 32, 32, 32, 32], [64, 64, 64, 64, 64, 32, 32, 32]
    frames = np.stack([paint_faces(64, 96, [(r, 0, RED), (b, 32, BLUE)]) for r, b in zip(red_x, blue_x)])
    write_video(tmp_path / "videos" / "grid.mp4", frames, fps=8)
    summary = main(["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "out"),
                    "--face-root", str(tmp_path / "insightface"), "--face-pack", "tiny",
                    "--providers", "CPUExecutionProvider", "--det-size", "96", "96", "--pairs-per-clip", "2"])
    assert (summary["used"], summary["pairs"], summary["skipped"]) == (1, 2, {})
    assert "2 pairs from 1 of 1 clips" in capsys.readouterr().out
    boxes = np.load(tmp_path / "out/videos/grid/boxes.npy")
    np.testing.assert_allclose(boxes[:, 0, 0], red_x, atol=1)
    np.testing.assert_allclose(boxes[:, 1, 0], blue_x, atol=1)
    row = load_pairs(tmp_path / "out" / "pairs.jsonl", check_files=True)[0]
    assert len(row["references"]) == 2
