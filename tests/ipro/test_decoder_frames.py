"""IPRO's frames decoded with gradients (ipro/decoder_frames.py): a uniform draw of k of F frames per
sample, whose mean reward has the clip's mean as its expectation."""
import itertools
from collections import Counter

import pytest
import torch

from identity_grpo.core.seeds import Stream, stream_rng
from identity_grpo.ipro.decoder_frames import draw_frames, graded_frames


def test_a_draw_is_k_distinct_ascending_frames_reproducible_per_sample():
    a = graded_frames(seed=0, step=3, process=1, micro_batch=2, batch=4, num_frames=81, count=4)
    assert a.shape == (4, 4) and a.dtype == torch.int64
    for row in a.tolist():
        assert row == sorted(set(row)) and all(0 <= f < 81 for f in row)
    assert torch.equal(a, graded_frames(0, 3, 1, 2, 4, 81, 4))
    assert len({tuple(r) for r in a.tolist()}) > 1  # samples draw their own frames
    assert not torch.equal(a, graded_frames(0, 4, 1, 2, 4, 81, 4))  # and each step anew


def test_the_mean_over_drawn_frames_is_unbiased_exactly():
    """F = 5 frames (latent chunks of 1 and 4 frames), k = 2: over the C(5, 2) = 10 equally likely
    draws each frame is drawn 4 times, so the mean of the per-draw means is the clip's mean."""
    reward = torch.tensor([0.9, 0.1, 0.4, 0.3, 0.8], dtype=torch.float64)  # per-frame rewards, mean 0.5
    draws = list(itertools.combinations(range(5), 2))
    estimates = [float(reward[list(d)].mean()) for d in draws]
    assert sum(estimates) / len(draws) == pytest.approx(0.5, abs=1e-12)
    # ... and draw_frames gives every one of the 10 draws, each about equally often.
    counts = Counter(tuple(draw_frames(5, 2, stream_rng(0, Stream.DECODER_FRAMES, i)).tolist()) for i in range(3000))
    assert set(counts) == set(draws)
    assert max(counts.values()) < 1.25 * 300 and min(counts.values()) > 0.75 * 300


def test_counts_outside_the_clip_are_refused():
    with pytest.raises(ValueError, match=r"in \[1, 5\]"):
        draw_frames(5, 6, torch.Generator())
