import numpy as np

from reward_model.baseline import BINS_PER_CHANNEL, colour_histogram, histogram_score, reference_histogram


def test_histogram_by_hand():
    pixels = np.array([[0, 0, 0], [255, 255, 255], [255, 255, 255], [40, 0, 0]], dtype=np.uint8)
    hist = colour_histogram(pixels)
    white = (5 * BINS_PER_CHANNEL + 5) * BINS_PER_CHANNEL + 5
    assert hist[0] == 0.5  # black and (40,0,0) share bin 0: 40 * 6 // 256 == 0
    assert hist[white] == 0.5


def test_reference_ignores_white_canvas_and_score_is_intersection():
    ref = np.full((4, 4, 3), 255, np.uint8)
    ref[:2] = [200, 0, 0]  # a red person on white
    assert reference_histogram(ref).max() == 1.0
    frames = np.zeros((2, 2, 2, 3), np.uint8)
    frames[0, 0, 0] = [200, 0, 0]  # one red pixel out of four in frame 0, none in frame 1
    assert histogram_score(frames, [ref]) == (0.25 + 0.0) / 2
