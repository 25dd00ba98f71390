"""Identity metrics on hand-built embeddings whose cosines to the references are known exactly."""
from __future__ import annotations

import math

import numpy as np
import pytest

from identity_grpo.faces.identity_metrics import (
    box_iou,
    identity_metrics,
    match_faces,
    pool_similarity,
)

DIM = 8
REFERENCES = np.eye(DIM)[:3]  # people A, B, C: orthonormal, so a face's cosines are its coordinates
A, B, C = 0, 1, 2
LEFT = [0.0, 0.0, 10.0, 10.0]
RIGHT = [20.0, 0.0, 30.0, 10.0]


def face(*cosines: float, rest_axis: int = 7) -> np.ndarray:
    """A unit embedding with the given cosines to A, B, C...; the remainder lies on `rest_axis`."""
    v = np.zeros(DIM)
    v[: len(cosines)] = cosines
    v[rest_axis] = math.sqrt(1.0 - float(np.dot(cosines, cosines)))
    return v


def greedy_total(similarity: np.ndarray) -> float:
    """The greedy matcher Hungarian is compared with: take the best remaining pair, repeat."""
    s = similarity.astype(float).copy()
    total = 0.0
    for _ in range(min(s.shape)):
        i, j = np.unravel_index(np.argmax(s), s.shape)
        total += s[i, j]
        s[i, :] = -np.inf
        s[:, j] = -np.inf
    return total


def test_hungarian_assignment_beats_greedy():
    faces = np.stack([face(0.6, 0.5), face(0.45, 0.05, rest_axis=6)])
    assignment = match_faces(faces, REFERENCES[:2], min_similarity=0.0)
    np.testing.assert_allclose(assignment.similarity, [[0.6, 0.5], [0.45, 0.05]], atol=1e-12)
    # Greedy grabs the single best pair (face 0 -> A, 0.6) and is left with 0.05: total 0.65.
    assert greedy_total(assignment.similarity) == pytest.approx(0.65)
    # Optimal: face 0 -> B (0.5), face 1 -> A (0.45): total 0.95.
    assert assignment.person_of_face.tolist() == [B, A]
    assert assignment.face_of_person.tolist() == [1, 0]
    assert matched_total(assignment) == pytest.approx(0.95)


def test_missing_people_extra_faces_and_the_similarity_floor():
    # One face for three people: B and C are missing.
    one = match_faces(face(0.9, 0.1)[None], REFERENCES)
    assert one.person_of_face.tolist() == [A]
    assert one.face_of_person.tolist() == [0, -1, -1]
    # Three faces for one person: the best one gets A, the others nobody.
    three = match_faces(np.stack([face(0.5), face(0.8), face(0.3)]), REFERENCES[:1])
    assert three.person_of_face.tolist() == [-1, A, -1]
    # A face below the floor is nobody, even when it is the only candidate.
    weak = match_faces(face(0.15)[None], REFERENCES[:1], min_similarity=0.2)
    assert weak.person_of_face.tolist() == [-1]
    assert weak.face_of_person.tolist() == [-1]


def test_floor_prefers_more_matches_over_one_strong_forbidden_pairing():
    # Face 0 fits A well (0.9) and B weakly (0.3); face 1 fits only A (0.4, B below floor).
    # Matching face 0 -> B, face 1 -> A keeps both people; face 0 -> A would leave face 1 nobody.
    faces = np.stack([face(0.9, 0.3), face(0.4, 0.1, rest_axis=6)])
    assignment = match_faces(faces, REFERENCES[:2], min_similarity=0.25)
    assert assignment.person_of_face.tolist() == [B, A]
    assert matched_total(assignment) == pytest.approx(0.7)


def test_swap_between_frames_is_detected_and_counted_once():
    a, b = face(0.9, 0.1), face(0.1, 0.8)
    # Frames 0-1: A left, B right; frames 2-3: they trade faces (and stay traded).
    frames = [np.stack([a, b]), np.stack([a, b]), np.stack([b, a]), np.stack([b, a])]
    boxes = [np.array([LEFT, RIGHT])] * 4
    metrics = identity_metrics(frames, REFERENCES[:2], face_boxes=boxes)
    assert metrics.swaps == 1  # two tracks change label, one event; not recounted in frame 3
    np.testing.assert_allclose(metrics.per_person_similarity, [0.9, 0.8])
    assert metrics.mean == pytest.approx(0.85)
    assert metrics.worst_person == pytest.approx(0.8)
    np.testing.assert_array_equal(metrics.missing_fraction, [0.0, 0.0])
    assert [m.tolist() for m in metrics.assignments] == [[A, B], [A, B], [B, A], [B, A]]

    # Trading back in a fifth frame is a second event.
    back = identity_metrics(frames + [np.stack([a, b])], REFERENCES[:2], face_boxes=boxes + [boxes[0]])
    assert back.swaps == 2

    # Without boxes, each face is linked to its own likeness: an in-place trade is invisible.
    assert identity_metrics(frames, REFERENCES[:2]).swaps == 0


def test_drift_from_one_person_to_another_is_a_swap_without_boxes():
    # One face whose likeness slides from A (0.6 vs 0.4) to B (0.4 vs 0.6); consecutive cosine 0.96.
    frames = [face(0.6, 0.4)[None], face(0.4, 0.6)[None]]
    metrics = identity_metrics(frames, REFERENCES[:2])
    assert metrics.swaps == 1
    assert [m.tolist() for m in metrics.assignments] == [[A], [B]]
    np.testing.assert_allclose(metrics.missing_fraction, [0.5, 0.5])
    # Each person appears in one frame only: no consecutive pair, so consistency is undefined.
    assert math.isnan(metrics.temporal_consistency)


def test_missing_person_is_counted_and_similarity_averages_present_frames_only():
    a, b, c = face(0.9), face(0.0, 0.7), face(0.0, 0.0, 0.5)
    c_better = face(0.0, 0.0, 0.7, rest_axis=6)
    frames = [np.stack([a, b, c]), np.stack([a, b]), np.stack([b, a]), np.stack([c_better, a, b])]
    metrics = identity_metrics(frames, REFERENCES)
    np.testing.assert_allclose(metrics.missing_fraction, [0.0, 0.0, 0.5])
    np.testing.assert_allclose(metrics.per_person_similarity, [0.9, 0.7, (0.5 + 0.7) / 2])
    assert metrics.worst_person == pytest.approx(0.6)
    assert metrics.swaps == 0


def test_temporal_consistency_by_hand():
    a0 = face(1.0)  # exactly A
    a1 = np.zeros(DIM)
    a1[[A, 5]] = [0.8, 0.6]  # cosine 0.8 with a0 and with A
    b = face(0.0, 0.9)
    frames = [np.stack([a0, b]), np.stack([a1, b]), np.stack([a1, b])]
    metrics = identity_metrics(frames, REFERENCES[:2])
    # A: consecutive cosines 0.8 and 1.0 -> 0.9; B: 1.0 and 1.0 -> 1.0; mean 0.95.
    assert metrics.temporal_consistency == pytest.approx(0.95)
    np.testing.assert_allclose(metrics.per_person_similarity, [(1.0 + 0.8 + 0.8) / 3, 0.9])


def test_person_never_seen_scores_zero_and_empty_frames_are_allowed():
    frames = [face(0.9)[None], np.zeros((0, DIM)), np.empty((0,))]
    metrics = identity_metrics(frames, REFERENCES[:2], face_boxes=[np.array([LEFT]), [], []])
    np.testing.assert_allclose(metrics.per_person_similarity, [0.9, 0.0])
    np.testing.assert_allclose(metrics.missing_fraction, [2 / 3, 1.0])
    assert metrics.worst_person == 0.0
    assert [m.tolist() for m in metrics.assignments] == [[A], [], []]


def test_four_people_each_found():
    refs = np.eye(DIM)[:4]
    faces = np.stack([face(0, 0, 0, 0.8), face(0.7), face(0, 0, 0.6), face(0, 0.9)])
    metrics = identity_metrics([faces, faces[::-1]], refs)
    np.testing.assert_allclose(metrics.per_person_similarity, [0.7, 0.9, 0.6, 0.8])
    assert [m.tolist() for m in metrics.assignments] == [[3, 0, 2, 1], [1, 2, 0, 3]]


def test_pool_similarity_by_hand():
    faces = np.array([[1.0, 0.0], [0.0, 2.0]])  # not unit length: cosine ignores scale
    pool = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
    # face 0: cos 1, 1/sqrt2, 0 -> (1 + 0.7071) / 3;  face 1: cos 0, 1/sqrt2, -1 -> (0.7071 - 1) / 3.
    expected = [(1 + 1 / math.sqrt(2)) / 3, (1 / math.sqrt(2) - 1) / 3]
    np.testing.assert_allclose(pool_similarity(faces, pool), expected)


def test_box_iou_by_hand():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0.0]])


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match=r"per_frame_face_embeddings\[1\]: embeddings are 4-d"):
        identity_metrics([face(0.9)[None], np.ones((1, 4))], REFERENCES)
    with pytest.raises(ValueError, match=r"face_boxes\[0\]: expected shape \(1, 4\)"):
        identity_metrics([face(0.9)[None]], REFERENCES, face_boxes=[np.zeros((2, 4))])
    with pytest.raises(ValueError, match="pool: embeddings are 3-d"):
        pool_similarity(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="pool is empty"):
        pool_similarity(np.ones((2, 2)), np.zeros((0, 2)))


def matched_total(assignment) -> float:
    """Sum of the matched pairs' similarities: what the Hungarian assignment maximises."""
    faces = np.flatnonzero(assignment.person_of_face >= 0)
    return float(assignment.similarity[faces, assignment.person_of_face[faces]].sum())
