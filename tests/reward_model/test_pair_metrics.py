import json

import numpy as np
import pytest

from identity_grpo.core.video import write_image, write_video
from reward_model.evaluation import compare_with_baseline, score_rows, validation_metrics
from reward_model.pair_metrics import PairScores, calibrate_tie_threshold, comparison_table, pair_report, severity_bin


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
