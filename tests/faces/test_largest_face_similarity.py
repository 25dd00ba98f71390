"""OpenS2V-Eval's FaceSim protocol (largest face per frame against the reference), by hand."""
import numpy as np
import pytest

from identity_grpo.faces.identity_metrics import largest_face_similarity


def test_the_largest_face_of_each_frame_against_its_closest_reference():
    references = np.array([[1.0, 0.0], [0.0, 1.0]])
    frames = [
        np.array([[1.0, 0.0], [0.6, 0.8]]),  # the second face is larger: cos to reference 2 = 0.8
        np.array([[1.0, 1.0]]),  # one face, 45 degrees from both: cos = 0.7071
        np.zeros((0, 2)),  # no face: 0
    ]
    boxes = [np.array([[0, 0, 10, 10], [20, 0, 40, 20]]), np.array([[0, 0, 5, 5]]), np.zeros((0, 4))]
    assert largest_face_similarity(frames, boxes, references) == pytest.approx((0.8 + 2 ** -0.5 + 0.0) / 3)
    # one reference: the plain cosine, as in OpenS2V-Eval
    assert largest_face_similarity(frames[:1], boxes[:1], references[1:]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="face_boxes"):
        largest_face_similarity(frames, boxes[:2], references)
