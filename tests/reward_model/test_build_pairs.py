import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

import reward_model.build_pairs as build_pairs
from reward_model.build_pairs import KINDS, blur_frames, build_synthetic_pairs, main, plan_split
from reward_model.config import DataConfig, SyntheticPairsConfig
from reward_model.pair_dataset import load_splits
from reward_model.pairs import load_pairs
from identity_grpo.core.config_io import ConfigError
from identity_grpo.core.owned_folder import MANIFEST
from identity_grpo.world.identities import face_differences, identity_from_id, is_heldout, look_alike, sample_identities
from identity_grpo.world.measure import identity_consistency
from identity_grpo.core.video import read_image, read_video
from tests_support import folder_contents, make_user_folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    manifests = build_synthetic_pairs(out, 24, 6, 6, seed=3, workers=1, progress=False)
    return out, manifests


def test_plan_balances_pair_types_and_kinds():
    plan = plan_split("train", 60, seed=0)
    assert [spec.index for spec in plan] == list(range(60))
    types = Counter(spec.pair_type for spec in plan)
    assert types == {"distorted": 24, "mild_severe": 6, "stranger": 15, "other_people": 3, "tie_clean": 6,
                     "tie_distorted": 6}
    distorted = Counter(spec.kind for spec in plan if spec.pair_type == "distorted")
    assert set(distorted) == set(KINDS) and max(distorted.values()) - min(distorted.values()) <= 1
    assert plan == plan_split("train", 60, seed=0) and plan != plan_split("train", 60, seed=1)


def test_manifests_load_with_every_file_present(built):
    out, manifests = built
    assert set(manifests) == {"train", "val", "test"}
    splits = {split: load_pairs(path, check_files=True) for split, path in manifests.items()}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [24, 6, 6]
    row = splits["train"][0]
    video = read_video(row["video_a"])
    assert video.shape == (8, 48, 64, 3)
    assert all(read_image(r).shape == (32, 32, 3) for r in row["references"])
    assert len(row["references"]) == len(row["identity_ids"]) in (2, 3)
    record = json.loads((out / MANIFEST).read_text())
    assert record["writer"] == "reward_model.build_pairs" and record["complete"] and record["settings"]["seed"] == 3
    written = {path: len(data) for path, data in folder_contents(out).items() if path != MANIFEST}
    assert record["files"] == written  # every file it wrote, with its size, and nothing else


def test_rows_follow_the_pair_recipe(built):
    _, manifests = built
    rows = [dict(r) for r in load_pairs(manifests["train"])]
    assert {r["label"] for r in rows} == {"a", "b", "tie"}
    for r in rows:
        assert r["source"] == "synthetic" and r["num_frames"] == 8 and r["fps"] == 8.0
        if r["label"] == "tie":
            assert r["distortion"] == "clean" or r["distortion"] in {f"{k}+{k}" for k in KINDS}
            assert r["severity"] == r["severity_other"]
        elif r["distortion"] == "stranger":  # 1-3 of 6 face attributes changed
            assert r["severity"] in (1 / 6, 2 / 6, 3 / 6, 4 / 6) and r["severity_other"] == 0.0
        elif r["distortion"] == "other_people":
            assert r["severity"] == 1.0 and r["severity_other"] == 0.0
        elif r["severity_other"] == 0.0:  # clean vs distorted
            assert r["distortion"] in KINDS and 0.3 <= r["severity"] <= 1.0
        else:  # mild vs severe
            assert r["severity"] - r["severity_other"] >= 0.4
        people = [identity_from_id(i) for i in r["identity_ids"]]
        assert r["prompt"].startswith(("two people: ", "three people: "))
        assert all(p.hair_colour in r["prompt"] for p in people)


def test_test_split_holds_only_heldout_identities(built):
    _, manifests = built
    for split in ("train", "val", "test"):
        ids = [i for row in load_pairs(manifests[split]) for i in row["identity_ids"]]
        assert all(is_heldout(i) == (split == "test") for i in ids)


def test_labels_point_at_the_clip_with_better_identities(built):
    """The independent measure agrees with the label on clearly distorted pairs."""
    _, manifests = built
    agree = total = 0
    for row in load_pairs(manifests["train"]):
        if row["label"] == "tie" or row["distortion"] == "degrade" or row["severity"] < 0.6:
            continue
        people = [identity_from_id(i) for i in row["identity_ids"]]
        score_a = identity_consistency(read_video(row["video_a"]), people).worst
        score_b = identity_consistency(read_video(row["video_b"]), people).worst
        agree += (score_a > score_b) == (row["label"] == "a")
        total += 1
    assert total >= 5 and agree == total


def test_a_finished_build_is_not_redone(built):
    out, manifests = built
    stamp = {p: p.stat().st_mtime_ns for p in (out / "videos" / "train").iterdir()}
    again = build_synthetic_pairs(out, 24, 6, 6, seed=3, workers=1, progress=False)
    assert again == manifests
    assert {p: p.stat().st_mtime_ns for p in (out / "videos" / "train").iterdir()} == stamp


def test_other_settings_rebuild_and_workers_do_not_change_the_result(tmp_path):
    first = build_synthetic_pairs(tmp_path / "one", 4, 2, 2, seed=5, workers=1, progress=False)
    second = build_synthetic_pairs(tmp_path / "two", 4, 2, 2, seed=5, workers=2, progress=False)
    for split in first:
        assert first[split].read_text() == second[split].read_text()
    a = read_video(tmp_path / "one" / "videos" / "val" / "000001_a.mp4")
    b = read_video(tmp_path / "two" / "videos" / "val" / "000001_a.mp4")
    np.testing.assert_array_equal(a, b)
    one = tmp_path / "one"
    (one / "videos" / "train" / "notes.txt").write_text("mine")  # a user's file, placed after the build
    (one / "mine").mkdir()
    (one / "mine" / "clip.mp4").write_bytes(b"mine too")
    old = set(json.loads((one / MANIFEST).read_text())["files"])
    build_synthetic_pairs(one, 3, 1, 1, seed=6, workers=1, progress=False)
    new = set(json.loads((one / MANIFEST).read_text())["files"])
    assert len(load_pairs(one / "train.jsonl", check_files=True)) == 3
    assert not (one / "videos" / "train" / "000003_a.mp4").exists() and "videos/train/000003_a.mp4" in old - new
    assert set(folder_contents(one)) == new | {MANIFEST, "videos/train/notes.txt", "mine/clip.mp4"}
    assert (one / "videos" / "train" / "notes.txt").read_text() == "mine" and (one / "mine" / "clip.mp4").exists()


def test_a_folder_of_someone_elses_files_is_refused_and_left_as_it_is(tmp_path, capsys):
    before = make_user_folder(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "data"), "--train", "2", "--val", "1", "--test", "1", "--workers", "1"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and len(error.strip().splitlines()) == 1
    assert str(tmp_path / "data") in error and "did not write" in error
    assert folder_contents(tmp_path / "data") == before


@pytest.mark.parametrize("args", [["--train", "-5"], ["--val", "0"], ["--num-frames", "0"], ["--height", "8"],
                                  ["--fps", "nan"], ["--reference-size", "0"], ["--workers", "0"], ["--seed", "-1"]])
def test_bad_arguments_change_nothing_of_a_finished_build(built, args, capsys):
    out, _ = built
    before = {path: (out / path).stat().st_mtime_ns for path in folder_contents(out)}
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(out), "--train", "24", "--val", "6", "--test", "6", "--seed", "3", "--workers", "1", *args])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and len(error.strip().splitlines()) == 1
    assert "must be" in error or "too small" in error
    assert {path: (out / path).stat().st_mtime_ns for path in folder_contents(out)} == before


def test_a_killed_build_leaves_no_file_it_does_not_know_of(tmp_path, monkeypatch):
    make_pair = build_pairs.make_pair

    def dies_at_pair_two(spec, settings, out_dir):
        if spec.index == 2:
            raise KeyboardInterrupt
        return make_pair(spec, settings, out_dir)

    monkeypatch.setattr(build_pairs, "make_pair", dies_at_pair_two)
    with pytest.raises(KeyboardInterrupt):
        build_synthetic_pairs(tmp_path, 4, 1, 1, seed=1, workers=1, progress=False)
    monkeypatch.undo()
    record = json.loads((tmp_path / MANIFEST).read_text())
    assert not record["complete"] and set(folder_contents(tmp_path)) - {MANIFEST} <= set(record["files"])
    build_synthetic_pairs(tmp_path, 4, 1, 1, seed=2, workers=1, progress=False)  # not refused: the folder is its own
    record = json.loads((tmp_path / MANIFEST).read_text())
    assert record["complete"] and set(folder_contents(tmp_path)) == set(record["files"]) | {MANIFEST}


def test_the_trainer_builds_synthetic_pairs_and_refuses_a_users_folder(tmp_path):
    solo = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    small = dict(num_train=3, num_val=1, num_test=1, num_frames=4)
    splits = load_splits(DataConfig(synthetic=SyntheticPairsConfig(out_dir=str(tmp_path / "pairs"), **small)), solo)
    assert {split: len(rows) for split, rows in splits.items()} == {"train": 3, "val": 1, "test": 1}
    before = make_user_folder(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"^data\.synthetic: .*did not write"):
        load_splits(DataConfig(synthetic=SyntheticPairsConfig(out_dir=str(tmp_path / "data"), **small)), solo)
    assert folder_contents(tmp_path / "data") == before


def test_command_line(tmp_path, capsys):
    manifests = main(["--out", str(tmp_path / "cli"), "--train", "2", "--val", "1", "--test", "1",
                      "--num-frames", "4", "--height", "32", "--width", "48", "--workers", "1"])
    assert "4 pairs" in capsys.readouterr().out
    row = load_pairs(manifests["test"], check_files=True)[0]
    assert read_video(row["video_b"]).shape == (4, 32, 48, 3) and row["num_frames"] == 4


def test_a_look_alike_differs_in_the_face_only():
    rng = np.random.default_rng(0)
    for split in ("train", "heldout"):
        person, friend = sample_identities(rng, 2, split)
        for changes in (1, 3):
            other = look_alike(rng, person, changes, [friend], split)
            assert face_differences(person, other) >= changes and other.shirt_colour == person.shirt_colour
            assert is_heldout(other.id) == (split == "heldout") and other.hair_colour != friend.hair_colour


def test_some_pairs_are_blurred_in_space_only(built):
    _, manifests = built
    rows = [json.loads(line) for line in manifests["train"].read_text().splitlines()]
    blurred = [r for r in rows if r["nuisance_blur"]]
    assert blurred and all(0.5 <= r["nuisance_blur"] <= 1.5 for r in blurred) and len(blurred) < len(rows)
    frames = np.zeros((2, 9, 9, 3), np.uint8)
    frames[0, 4, 4] = 200  # one bright pixel in the first frame
    out = blur_frames(frames, 1.0)
    assert (out[1] == 0).all()  # nothing leaks into the other frame
    assert out[0, 4, 4, 0] == round(200 / (2 * np.pi))  # the 2-D Gaussian's peak weight, 1 / (2 pi sigma^2)
    assert out[0, 4, 5, 0] == round(200 * np.exp(-0.5) / (2 * np.pi))
