import json

import numpy as np
import pytest

from identity_grpo.core.video import write_image, write_video
from reward_model.evaluation import compare_with_baseline, reference_swap, score_rows, validation_metrics
from reward_model.pair_metrics import (PairScores, calibrate_tie_threshold, clean_clips, comparison_table, pair_report,
                                       severity_bin, swap_report, swapped_references)


def rows():
    return [
        {"label": "a", "source": "synthetic", "distortion": "swap", "severity": 0.9},
        {"label": "b", "source": "synthetic", "distortion": "swap", "severity": 0.2},
        {"label": "a", "source": "human", "distortion": None, "severity": None},
        {"label": "tie", "source": "synthetic", "distortion": "clean", "severity": None},
        {"label": "tie", "source": "synthetic", "distortion": "clean", "severity": None},
    ]


def test_pair_report_by_hand():
    # margins: +1 (right), +0.5 (wrong: b preferred), -2 (wrong), 0.1 (tie), 3 (tie)
    scores = PairScores(np.array([1.0, 0.5, 0.0, 0.1, 3.0]), np.zeros(5), rows())
    report = pair_report(scores, tie_threshold=0.5)
    assert report.accuracy == 1 / 3
    assert report.tie_accuracy == 0.5  # |0.1| < 0.5 is called a tie, |3| is not
    assert report.num_tied == 2 and report.num_pairs == 5
    assert report.by_source["synthetic"].correct == 1 and report.by_source["synthetic"].total == 2
    assert report.by_source["human"].value == 0.0
    assert report.by_distortion["swap"].value == 0.5
    assert report.by_severity["severe"].value == 1.0 and report.by_severity["mild"].value == 0.0
    table = comparison_table({"m": report})
    assert table[0] == ["slice", "m", "pairs"] and table[1] == ["all non-tied pairs", "33.3%", "3"]


def test_tie_threshold_maximises_three_way_accuracy():
    margins = np.array([2.0, -2.0, 0.2, -0.3, 1.0])
    labels = ["a", "b", "tie", "tie", "a"]
    threshold = calibrate_tie_threshold(margins, labels)
    assert 0.3 < threshold <= 1.0  # both ties caught, the 1.0 win still a win
    assert calibrate_tie_threshold(margins, ["a", "b", "a", "b", "a"]) == 0.0


def test_severity_bins():
    assert [severity_bin(s) for s in (0.0, 0.4, 0.99, 1.0, None)] == ["mild", "medium", "severe", "severe", None]


def brightness(videos, refs, prompts):
    return np.array([float(v.mean()) for v in videos])


def pair(pair_id, a, b, label, references):
    return {"pair_id": pair_id, "video_a": str(a), "video_b": str(b), "label": label, "references": references,
            "prompt": "p", "source": "synthetic", "distortion": None, "severity": None}


@pytest.fixture
def clips(tmp_path):
    """Clips of brightness 40, 120, 200, a reference image, and a truncated clip and reference."""
    paths = {}
    for level in (40, 120, 200):
        paths[level] = tmp_path / f"{level}.mp4"
        write_video(paths[level], np.full((2, 16, 32, 3), level, np.uint8), fps=8)
    paths["ref"] = tmp_path / "ref.png"
    write_image(paths["ref"], np.full((8, 8, 3), 90, np.uint8))
    paths["bad_clip"] = tmp_path / "bad.mp4"
    paths["bad_clip"].write_bytes(paths[40].read_bytes()[:300])
    paths["bad_ref"] = tmp_path / "bad.png"
    paths["bad_ref"].write_bytes(paths["ref"].read_bytes()[:40])
    return paths


def test_pairs_with_an_unreadable_file_are_left_out_counted_and_named(clips, caplog):
    ref, bad_ref = [str(clips["ref"])], [str(clips["bad_ref"])]
    rows = [pair("p1", clips[200], clips[40], "a", ref), pair("p2", clips["bad_clip"], clips[40], "b", ref),
            pair("p3", clips[40], clips[120], "b", bad_ref), pair("p4", clips[40], clips[200], "b", ref)]
    scores = score_rows(brightness, rows, num_frames=2, desc="test")
    assert [r["pair_id"] for r in scores.rows] == ["p1", "p4"]
    assert scores.skipped == {"unreadable_video": 1, "unreadable_reference": 1}
    assert pair_report(scores, 0.0).accuracy == 1.0
    warnings = [r.getMessage() for r in caplog.records if r.name == "reward_model.evaluation"]
    assert warnings[0].startswith(f"test: pair 'p2' (row 2) left out, unreadable_video: {clips['bad_clip']}: cannot")
    assert warnings[1].startswith(f"test: pair 'p3' (row 3) left out, unreadable_reference: {clips['bad_ref']}: cannot")
    logged = validation_metrics(scores)
    assert logged["val/skipped/unreadable_video"] == logged["val/skipped/unreadable_reference"] == 1
    assert logged["val/accuracy"] == 1.0


def test_the_final_comparison_reports_what_it_left_out(clips, capsys):
    ref = [str(clips["ref"])]
    splits = {"val": [pair("v1", clips[200], clips[40], "a", ref), pair("v2", clips[40], clips["bad_clip"], "a", ref)],
              "test": [pair("t1", clips[200], clips[120], "a", ref), pair("t2", clips[120], clips[200], "b", ref),
                       pair("t3", clips[40], clips[200], "b", [str(clips["bad_ref"])])]}
    metrics = compare_with_baseline(brightness, splits, num_frames=2)
    assert metrics["accuracy"] == 1.0 and metrics["num_test_pairs"] == 2
    assert metrics["skipped_test_pairs"] == {"unreadable_reference": 1}
    assert metrics["skipped_val_pairs"] == {"unreadable_video": 1}
    json.dumps(metrics)  # metrics.json
    assert capsys.readouterr().out.strip().endswith(
        "left out (unreadable files, see the warnings): val 1 unreadable_video, test 1 unreadable_reference")


def test_clean_clips_by_hand():
    rows = [
        {"label": "b", "video_a": "d.mp4", "video_b": "c1.mp4", "references": ["r1", "r2"], "prompt": "p1",
         "distortion": "swap", "severity": 0.7, "severity_other": 0.0},  # clean vs distorted: b is clean
        {"label": "a", "video_a": "m.mp4", "video_b": "s.mp4", "references": ["r1", "r2"], "prompt": "p1",
         "distortion": "swap", "severity": 0.9, "severity_other": 0.2},  # mild vs severe: neither is clean
        {"label": "tie", "video_a": "t1.mp4", "video_b": "t2.mp4", "references": ["r3", "r4"], "prompt": "p2",
         "distortion": "clean", "severity": None, "severity_other": None},  # clean tie: both
        {"label": "tie", "video_a": "x.mp4", "video_b": "y.mp4", "references": ["r3", "r4"], "prompt": "p2",
         "distortion": "blur+blur", "severity": 0.5, "severity_other": 0.5},
        {"label": "a", "video_a": "c1.mp4", "video_b": "z.mp4", "references": ["r1", "r2"], "prompt": "p1",
         "distortion": "stranger", "severity": 0.5, "severity_other": 0.0},  # c1 again: listed once
        {"label": "a", "video_a": "h.mp4", "video_b": "g.mp4", "references": ["r5"], "prompt": "p3"},  # no fields
    ]
    assert clean_clips(rows) == [("c1.mp4", ("r1", "r2"), "p1"), ("t1.mp4", ("r3", "r4"), "p2"),
                                 ("t2.mp4", ("r3", "r4"), "p2")]


def test_swapped_references_pick_the_next_clip_with_other_people():
    refs = [("r1", "r2"), ("r1", "r2"), ("r3",), ("r4", "r5"), ("r2", "r6")]
    # clip 0: clip 1 shares people, clip 2 has one reference (fallback order), clip 3 has two and none shared
    # clip 1: the same; clip 2: no other single-reference clip, so the next disjoint one (3)
    # clip 3: the next with two and none shared is 4; clip 4: 0 and 1 share r2, 2 has one reference, so 3
    assert swapped_references(refs) == [3, 3, 3, 4, 3]
    assert swapped_references([("r1",), ("r1", "r2")]) == [None, None]  # nobody else to swap with: left out


def test_swap_report_by_hand():
    report = swap_report(np.array([2.0, 1.0, 0.5, 3.0]), np.array([1.0, 1.5, 0.5, -1.0]))
    assert report.accuracy == 0.5  # 2 > 1 and 3 > -1; 1 < 1.5; a draw is not a win
    assert report.mean_margin == (1.0 - 0.5 + 0.0 + 4.0) / 4
    assert report.num_clips == 4 and np.isnan(swap_report(np.zeros(0), np.zeros(0)).accuracy)


def test_reference_swap_scores_each_clean_clip_with_its_own_and_another_clips_references(clips, tmp_path):
    refs = {}
    for level in (40, 120, 200):
        refs[level] = str(tmp_path / f"ref{level}.png")
        write_image(refs[level], np.full((8, 8, 3), level, np.uint8))

    def closeness(videos, references, prompts):  # a scorer that compares: -|clip brightness - reference brightness|
        return np.array([-abs(float(v.mean()) - float(r[0].mean())) for v, r in zip(videos, references)])

    def clean_pair(pair_id, level, worse):
        row = pair(pair_id, clips[level], clips[worse], "a", [refs[level]])
        return {**row, "distortion": "swap", "severity": 0.5, "severity_other": 0.0}

    rows = [clean_pair("t1", 40, 120), clean_pair("t2", 120, 40), clean_pair("t3", 200, 40)]
    report = reference_swap(closeness, rows, num_frames=2, name="test")
    assert report.num_clips == 3 and report.accuracy == 1.0
    # clip 40 with references 120: margin 80; clip 120 with 200: 80; clip 200 with 40: 160
    assert report.mean_margin == pytest.approx((80 + 80 + 160) / 3, abs=3)  # mp4 keeps flat grey within a few levels
    assert reference_swap(brightness, rows, num_frames=2, name="test").accuracy == 0.0  # blind to references
    alone = reference_swap(closeness, rows[:1] + [{**rows[1], "references": rows[0]["references"]}], 2, "test")
    assert alone.num_clips == 0 and np.isnan(alone.accuracy)  # the same people in every clean clip: nothing to swap
    metrics = compare_with_baseline(closeness, {"test": rows}, num_frames=2)
    assert metrics["reference_swap"]["accuracy"] == 1.0 and metrics["reference_swap"]["num_clips"] == 3
    assert set(metrics["baseline_reference_swap"]) == {"accuracy", "mean_margin", "num_clips"}
