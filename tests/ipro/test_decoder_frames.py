"""IPRO's frames decoded with gradients (ipro/decoder_frames.py): whole latent chunks drawn in proportion
to their frames, whose scored mean has the clip's per-frame mean as its expectation."""
import itertools
from collections import Counter

import pytest
import torch

from identity_grpo.core.seeds import Stream, stream_rng
from identity_grpo.ipro.decoder_frames import (chunk_count, chunk_frames, chunk_probabilities, draw_chunks,
                                               graded_frames)


def test_chunks_and_their_frames_by_hand():
    assert [chunk_count(k, 4) for k in (1, 4, 5, 8)] == [1, 1, 2, 2]
    # 9 frames = frame 0 + two chunks of 4: shares 1/9, 4/9, 4/9
    assert chunk_probabilities(3, 4).tolist() == pytest.approx([1 / 9, 4 / 9, 4 / 9])
    assert chunk_frames(0, 4) == [0, 0, 0, 0] and chunk_frames(2, 4) == [5, 6, 7, 8]


def test_a_draw_is_whole_chunks_reproducible_per_sample():
    a = graded_frames(seed=0, step=3, process=1, micro_batch=2, batch=6, num_frames=81, grad_frames=5)
    assert a.shape == (6, 8) and a.dtype == torch.int64  # 5 frames -> 2 chunks of 4
    for row in a.tolist():
        for chunk in (row[:4], row[4:]):
            assert chunk == [0] * 4 or chunk == list(range(chunk[0], chunk[0] + 4)) and chunk[0] % 4 == 1
    assert torch.equal(a, graded_frames(0, 3, 1, 2, 6, 81, 5))
    assert len({tuple(r) for r in a.tolist()}) > 1  # samples draw their own chunks
    assert not torch.equal(a, graded_frames(0, 4, 1, 2, 6, 81, 5))  # and each step anew


@pytest.mark.parametrize("count", [1, 2])
def test_the_scored_mean_is_unbiased_exactly(count):
    """F = 9 frames (chunks of 1, 4, 4), m = count chunks: over every ordered draw, weighted by its
    probability, the mean of the scored frames (chunk 0's frame 4 times) is the clip's mean."""
    reward = torch.tensor([0.9, 0.1, 0.4, 0.3, 0.8, 0.2, 0.6, 0.5, 0.7], dtype=torch.float64)  # mean 0.5
    p = chunk_probabilities(3, 4)
    expectation = 0.0
    for draw in itertools.product(range(3), repeat=count):
        frames = [f for c in draw for f in chunk_frames(c, 4)]
        expectation += float(torch.prod(p[list(draw)])) * float(reward[frames].mean())
    assert expectation == pytest.approx(0.5, abs=1e-12)
    assert float(reward[chunk_frames(1, 4)].mean()) != pytest.approx(0.5)  # one draw alone is not the mean


def test_draws_follow_the_chunk_probabilities():
    counts = Counter(int(draw_chunks(3, 4, 1, stream_rng(0, Stream.DECODER_FRAMES, i))) for i in range(1800))
    assert counts[0] == pytest.approx(200, rel=0.3) and counts[1] == pytest.approx(800, rel=0.12)
    assert counts[2] == pytest.approx(800, rel=0.12)
