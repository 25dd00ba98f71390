import numpy as np

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
