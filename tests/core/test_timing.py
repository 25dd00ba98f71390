"""The phase timer sums each phase's seconds over calls, synchronizes the device at both ends of a
phase, still charges a phase that raised; NO_TIMING's phases are plain blocks."""
import pytest

from identity_grpo.core import timing
from identity_grpo.core.timing import NO_TIMING, PhaseTimer


def test_phases_sum_over_calls_and_sync_at_both_ends(monkeypatch):
    clock = iter([10.0, 12.5, 20.0, 21.0, 30.0, 30.25])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    syncs = []
    timer = PhaseTimer(synchronize=lambda: syncs.append(1))
    with timer.phase("sample"):
        pass
    with timer.phase("sample"):
        pass
    with pytest.raises(RuntimeError):
        with timer.phase("reward"):
            raise RuntimeError("a failing phase still took its time")
    assert dict(timer.seconds) == {"sample": 3.5, "reward": 0.25}
    assert dict(timer.calls) == {"sample": 2, "reward": 1}
    assert len(syncs) == 6
    timer.reset()
    assert not timer.seconds and not timer.calls


def test_no_timing_runs_the_block_and_records_nothing():
    ran = []
    with NO_TIMING.phase("anything"):
        ran.append(True)
    assert ran == [True] and not hasattr(NO_TIMING, "seconds")
