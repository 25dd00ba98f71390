import math

import numpy as np
import pytest

from identity_grpo.world.distortions import (
    BLEND_MAX_WEIGHT,
    DISTORTIONS,
    apply_distortion,
    box_region,
    degrade,
    pixelate,
    resample_box,
)
from identity_grpo.world.clips import sample_clip
from identity_grpo.world.identities import sample_identities

T, H, W = 6, 24, 40
# Three flat-coloured "faces" on a grey frame: box k holds value 60 + 60 k.
BOXES = np.array([[4, 4, 12, 14], [16, 5, 24, 15], [28, 4, 36, 14]], dtype=np.float32)


def flat_clip() -> tuple[np.ndarray, np.ndarray]:
    frames = np.full((T, H, W, 3), 30, dtype=np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(BOXES.astype(int)):
        frames[:, y0:y1, x0:x1] = 60 + 60 * k
    return frames, np.broadcast_to(BOXES, (T, 3, 4)).copy()


def changed_people(before: np.ndarray, after: np.ndarray, boxes: np.ndarray) -> set[int]:
    """People whose box differs in some frame."""
    result = set()
    for t in range(len(before)):
        for k, box in enumerate(boxes[t]):
            r0, r1, c0, c1 = box_region(box, *before.shape[1:3])
            if (before[t, r0:r1, c0:c1] != after[t, r0:r1, c0:c1]).any():
                result.add(k)
    return result


def outside_boxes(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    mask = np.ones(frames.shape[:3], dtype=bool)
    for t in range(len(frames)):
        for box in boxes[t]:
            r0, r1, c0, c1 = box_region(box, *frames.shape[1:3])
            mask[t, r0:r1, c0:c1] = False
    return frames[mask]


EXPECTED_CHANGED = {"swap": 2, "drift": 1, "blend": 1, "duplicate": 1, "flicker": 1, "degrade": 3}


def test_box_region_rounds_outwards_and_clips():
    assert box_region(np.array([1.2, 2.7, 5.1, 6.0]), 10, 10) == (2, 6, 1, 6)
    assert box_region(np.array([-3.0, 8.5, 4.0, 14.0]), 10, 10) == (8, 10, 0, 4)
    assert box_region(np.array([12.0, 0.0, 15.0, 3.0]), 10, 10) == (0, 3, 10, 10)  # off the frame: empty


def test_resample_box_copies_equal_boxes_exactly_and_stretches_others():
    frame = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6, 8, 3)
    np.testing.assert_array_equal(resample_box(frame, np.array([1, 1, 4, 3.0]), np.array([4, 2, 7, 4.0])),
                                  frame[1:3, 1:4])
    # Source columns 1-2 (values 20, 30) stretched onto 4 columns: target pixel centres land at
    # source positions 0.75, 1.25, 1.75, 2.25, clamped to the source box's columns [1, 2].
    row = np.zeros((1, 4, 3), dtype=np.float32)
    row[0, :, 0] = [10, 20, 30, 40]
    out = resample_box(row, np.array([1, 0, 3, 1.0]), np.array([0, 0, 4, 1.0]))
    np.testing.assert_allclose(out[0, :, 0], [20.0, 22.5, 27.5, 30.0])


@pytest.mark.parametrize("kind", sorted(DISTORTIONS))
def test_severity_zero_is_an_exact_copy(kind):
    frames, boxes = flat_clip()
    out = apply_distortion(kind, frames, boxes, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out, frames)
    assert out is not frames


@pytest.mark.parametrize("kind", sorted(DISTORTIONS))
def test_only_the_boxes_it_should_change(kind):
    rng = np.random.default_rng(1)
    clip = sample_clip(rng, sample_identities(rng, 3), num_frames=8)
    for seed in range(3):
        out = apply_distortion(kind, clip.frames, clip.boxes, 0.8, np.random.default_rng(seed))
        assert out.shape == clip.frames.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(outside_boxes(out, clip.boxes), outside_boxes(clip.frames, clip.boxes))
        assert len(changed_people(clip.frames, out, clip.boxes)) == EXPECTED_CHANGED[kind]


def face(frame: np.ndarray, k: int) -> np.ndarray:
    x0, y0, x1, y1 = BOXES[k].astype(int)
    return frame[y0:y1, x0:x1]


def test_swap_exchanges_faces_in_the_last_frames():
    frames, boxes = flat_clip()
    out = apply_distortion("swap", frames, boxes, 0.5, np.random.default_rng(0))
    swapped_frames = math.ceil(0.5 * T)
    np.testing.assert_array_equal(out[: T - swapped_frames], frames[: T - swapped_frames])
    pair = np.flatnonzero(face_values(out)[-1] != face_values(frames)[-1])
    assert len(pair) == 2
    i, j = pair
    for t in range(T - swapped_frames, T):  # equal-sized whole-pixel boxes: an exact exchange
        np.testing.assert_array_equal(face(out[t], i), face(frames[t], j))
        np.testing.assert_array_equal(face(out[t], j), face(frames[t], i))


def face_values(out: np.ndarray) -> np.ndarray:
    """[T, 3] the value at the centre of each flat face."""
    return np.stack([out[:, int(b[1]) + 4, int(b[0]) + 4, 0] for b in BOXES], axis=1).astype(int)


def test_blend_mixes_by_hand_worked_weight():
    frames, boxes = flat_clip()
    out = apply_distortion("blend", frames, boxes, 0.4, np.random.default_rng(0))
    values = face_values(out)
    changed = [k for k in range(3) if (values[:, k] != 60 + 60 * k).any()]
    assert len(changed) == 1
    victim = changed[0]
    # The donor is one of the other two faces: 0.75 * 0.4 = 0.3 of the way towards it.
    candidates = {round((60 + 60 * victim) + BLEND_MAX_WEIGHT * 0.4 * (60 + 60 * d - (60 + 60 * victim)))
                  for d in range(3) if d != victim}
    assert len(set(values[:, victim])) == 1 and values[0, victim] in candidates


def test_drift_grows_linearly_over_time():
    frames, boxes = flat_clip()
    out = face_values(apply_distortion("drift", frames, boxes, 1.0, np.random.default_rng(2)))
    original = face_values(frames)
    victim = int(np.flatnonzero((out != original).any(axis=0))[0])
    shift = out[:, victim] - original[:, victim]
    assert shift[0] == 0
    donor_gap = shift[-1]  # severity 1: the last frame is the donor's face
    assert abs(donor_gap) in (60, 120)
    np.testing.assert_allclose(shift, donor_gap * np.arange(T) / (T - 1), atol=0.51)


def test_duplicate_copies_a_face_for_ceil_severity_frames():
    frames, boxes = flat_clip()
    for severity in (0.2, 0.5, 1.0):
        out = face_values(apply_distortion("duplicate", frames, boxes, severity, np.random.default_rng(3)))
        original = face_values(frames)
        changed_frames = np.flatnonzero((out != original).any(axis=1))
        assert list(changed_frames) == list(range(T - math.ceil(severity * T), T))
        # In a duplicated frame two faces show the same value.
        assert all(len(set(out[t])) == 2 for t in changed_frames)


def test_flicker_frames_grow_as_supersets_with_severity():
    frames, boxes = flat_clip()
    previous: set[int] = set()
    for severity in (0.1, 0.4, 0.7, 1.0):
        out = face_values(apply_distortion("flicker", frames, boxes, severity, np.random.default_rng(4)))
        flickered = set(np.flatnonzero((out != face_values(frames)).any(axis=1)).tolist())
        assert len(flickered) == math.ceil(severity * T / 2)
        assert previous <= flickered
        previous = flickered


@pytest.mark.parametrize("kind", ["swap", "drift", "blend", "duplicate", "flicker"])
def test_change_grows_with_severity(kind):
    rng = np.random.default_rng(5)
    clip = sample_clip(rng, sample_identities(rng, 2), num_frames=8)
    amounts = [np.abs(apply_distortion(kind, clip.frames, clip.boxes, s, np.random.default_rng(6)).astype(int)
                      - clip.frames).sum() for s in (0.2, 0.5, 0.8, 1.0)]
    assert amounts == sorted(amounts) and amounts[0] > 0 and amounts[-1] > amounts[0]


@pytest.mark.parametrize("mode", ["blur", "noise", "pixelate"])
def test_degrade_modes_grow_with_severity_and_stay_inside_boxes(mode):
    rng = np.random.default_rng(7)
    clip = sample_clip(rng, sample_identities(rng, 2), num_frames=4)
    amounts, detail = [], []
    for severity in (0.2, 0.6, 1.0):
        out = degrade(clip.frames, clip.boxes, severity, np.random.default_rng(8), mode=mode)
        np.testing.assert_array_equal(outside_boxes(out, clip.boxes), outside_boxes(clip.frames, clip.boxes))
        amounts.append(np.abs(out.astype(int) - clip.frames).sum())
        x0, y0, x1, y1 = clip.boxes[0, 0].astype(int)
        detail.append(len(np.unique(out[0, y0:y1, x0:x1].reshape(-1, 3), axis=0)))
    assert amounts[0] > 0
    if mode == "pixelate":  # bigger blocks: fewer distinct colours (the changed amount need not grow)
        assert detail == sorted(detail, reverse=True) and detail[0] > detail[-1]
    else:
        assert amounts == sorted(amounts)
    with pytest.raises(ValueError, match="mode"):
        degrade(clip.frames, clip.boxes, 0.5, np.random.default_rng(0), mode="sharpen")


def test_pixelate_by_hand():
    region = np.arange(3 * 4, dtype=np.float32).reshape(3, 4, 1).repeat(3, axis=2)
    out = pixelate(region, 2)[..., 0]
    # Blocks from the top-left; the bottom row's blocks average the row with its repeat.
    np.testing.assert_allclose(out, [[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5], [8.5, 8.5, 10.5, 10.5]])


def test_bad_inputs_are_rejected():
    frames, boxes = flat_clip()
    with pytest.raises(ValueError, match="unknown distortion"):
        apply_distortion("melt", frames, boxes, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="severity"):
        apply_distortion("swap", frames, boxes, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2 people"):
        apply_distortion("swap", frames, boxes[:, :1], 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="boxes"):
        apply_distortion("blend", frames, boxes[:3], 0.5, np.random.default_rng(0))
    # One person is enough to degrade.
    assert apply_distortion("degrade", frames, boxes[:, :1], 0.5, np.random.default_rng(0)).shape == frames.shape


def test_works_on_real_looking_boxes_that_leave_the_frame():
    rng = np.random.default_rng(9)
    frames = rng.integers(0, 256, size=(4, 30, 50, 3), dtype=np.uint8)
    boxes = np.array([[[-5.5, 2.2, 10.3, 20.9], [35.2, 10.0, 58.0, 33.0], [52.0, 5.0, 60.0, 12.0]]] * 4,
                     dtype=np.float32)  # the third box lies wholly right of the frame
    for kind in DISTORTIONS:
        out = apply_distortion(kind, frames, boxes, 1.0, np.random.default_rng(0))
        np.testing.assert_array_equal(outside_boxes(out, boxes), outside_boxes(frames, boxes))
