"""Stage 1 blown up with train.lr=1e10 (tiny model, seconds): the first step makes the weights huge,
every later loss is NaN. The run must stop with one line and exit 1, never report an accuracy, and
write no final/."""
import json

import pytest

import train_reward
from tests_support import TINY_REWARD_OVERRIDES


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return tmp_path_factory.mktemp("pairs")  # built by the first run, reused by the second


def blown_up(tmp_path, pairs, capsys, *overrides) -> tuple[int, str, dict]:
    argv = ["--config", "configs/reward/synthetic.yaml", *TINY_REWARD_OVERRIDES, f"output_dir={tmp_path / 'run'}",
            f"data.synthetic.out_dir={pairs}", "train.lr=1e10", *overrides]
    code = train_reward.main(argv)
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    return code, last_line, json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_consecutive_nan_losses_stop_the_run(tmp_path, pairs, capsys):
    code, line, metrics = blown_up(tmp_path, pairs, capsys, "train.max_steps=6", "train.max_consecutive_skips=2",
                                   "train.eval_every=1")
    assert code == 1
    assert line == ("run stopped at step 3: 2 consecutive steps skipped for non-finite values "
                    "(train.max_consecutive_skips), the last for its loss: nan")
    assert metrics == {"status": "failed", "reason": line, "steps": 3, "skipped_steps": {"loss": 2},
                       "skipped_samples": {}}
    assert not (tmp_path / "run" / "final").exists()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 1 and log[0]["train/loss"] > 0  # the step that blew the weights up was finite
    # Validation counts the NaN scores of the blown-up model instead of computing an accuracy from them.
    assert log[1:] == [{"step": 1, "val/non_finite_pairs": 4}, {"step": 2, "skip/loss": 1},
                       {"step": 2, "val/non_finite_pairs": 4}, {"step": 3, "skip/loss": 2}]


def test_a_model_scoring_nan_fails_the_final_evaluation(tmp_path, pairs, capsys):
    """One skip is below the limit: the run ends, but its finite, huge weights score every clip NaN."""
    code, line, metrics = blown_up(tmp_path, pairs, capsys, "train.max_steps=2")
    assert code == 1 and metrics["status"] == "failed" and metrics["reason"] == line
    assert line.startswith("run failed after step 2, in the final evaluation: the reward model gives non-finite "
                           "scores in ") and line.endswith("; nothing exported")
    assert metrics["skipped_steps"] == {"loss": 1} and "accuracy" not in metrics
    assert not (tmp_path / "run" / "final").exists()
