"""face_crop: box crops equal slicing + resizing, gradients stay in the box, alignment matches insightface's norm_crop."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from identity_grpo.faces.crop import ARCFACE_TEMPLATE_112, align_faces, crop_faces, similarity_transform


def frames_of(seed: int, n: int = 2, height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def slice_and_resize(frame: torch.Tensor, x0: int, y0: int, x1: int, y1: int, size: int) -> torch.Tensor:
    """The non-differentiable reference: cut the box's pixels out, resize corner-to-corner."""
    region = frame[None, :, y0:y1, x0:x1]
    return F.interpolate(region, size=(size, size), mode="bilinear", align_corners=True)[0]


@pytest.mark.parametrize("side", [16, 10, 40])  # copy, enlarge, shrink
def test_integer_square_box_equals_slicing_and_resizing(side):
    frames = frames_of(0)
    boxes = torch.tensor([[5, 7, 5 + side, 7 + side], [20, 3, 20 + side, 3 + side]], dtype=torch.float32)
    crops = crop_faces(frames, boxes, size=16)
    assert crops.shape == (2, 3, 16, 16)
    for frame, box, crop in zip(frames, boxes.int().tolist(), crops):
        torch.testing.assert_close(crop, slice_and_resize(frame, *box, 16), atol=1e-5, rtol=0)
    if side == 16:
        torch.testing.assert_close(crops[0], frames[0, :, 7:23, 5:21], atol=1e-5, rtol=0)


def test_boxes_are_made_square_about_their_centre_then_widened_by_the_margin():
    frames = frames_of(1, n=1)
    wide = torch.tensor([[10.0, 20.0, 30.0, 30.0]])  # 20 x 10, centre (20, 25) -> square 10..30 x 15..35
    torch.testing.assert_close(crop_faces(frames, wide, 12)[0], slice_and_resize(frames[0], 10, 15, 30, 35, 12))
    # margin 0.25 of a 20-pixel side adds 5 pixels on each side: 5..35 x 10..40.
    torch.testing.assert_close(
        crop_faces(frames, wide, 12, margin=0.25)[0], slice_and_resize(frames[0], 5, 10, 35, 40, 12)
    )


def test_gradients_reach_the_frames_only_inside_the_box():
    frames = frames_of(2).requires_grad_()  # 64 wide: grid_sample's [-1, 1] coordinates are exact, no rounding leak
    boxes = torch.tensor([[8.0, 12.0, 20.0, 24.0], [30.0, 30.0, 60.0, 60.0]])
    crops = crop_faces(frames, boxes, size=16)  # 12 px enlarged, 30 px shrunk
    (crops * torch.rand_like(crops)).sum().backward()
    for grad, (x0, y0, x1, y1) in zip(frames.grad, boxes.int().tolist()):
        inside = torch.zeros_like(grad, dtype=torch.bool)
        inside[:, y0:y1, x0:x1] = True
        assert torch.all(grad[~inside] == 0)
        # Samples are under 2 pixels apart, so every pixel of the box has one within reach.
        assert grad[inside].abs().min() > 0
    assert boxes.grad is None


def test_similarity_fit_recovers_a_known_transform():
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64)
    angle, scale, shift = 0.3, 1.7, torch.tensor([12.0, -4.0], dtype=torch.float64)
    linear = scale * torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64
    )
    landmarks = template @ linear.T + shift
    fitted = similarity_transform(template[None], landmarks[None])[0]
    torch.testing.assert_close(fitted, torch.cat([linear, shift[:, None]], dim=1))


def test_alignment_matches_insightface_norm_crop():
    face_align = pytest.importorskip("insightface.utils.face_align")
    height, width = 150, 170
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    # Smooth, varied content, so a half-pixel or transposition error shows.
    image = np.stack([np.sin(x / 9) + np.cos(y / 7), np.sin((x + y) / 11), x / width], axis=-1).astype(np.float32)
    rng = np.random.default_rng(0)
    angle, scale = 0.4, 0.8
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (np.array(ARCFACE_TEMPLATE_112) @ rotation.T + [30, 20] + rng.normal(0, 1.5, (5, 2))).astype(np.float32)
    with warnings.catch_warnings():  # newer skimage deprecates the call insightface makes
        warnings.simplefilter("ignore", FutureWarning)
        reference = face_align.norm_crop(image, landmarks)
    ours = align_faces(torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(landmarks)[None])
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), reference, atol=1e-4)


def test_alignment_passes_gradients_to_the_frame():
    frames = frames_of(3, n=1, height=140, width=140).requires_grad_()
    landmarks = torch.tensor(ARCFACE_TEMPLATE_112)[None] + 10
    align_faces(frames, landmarks).sum().backward()
    assert frames.grad.abs().sum() > 0


def test_bad_boxes_are_refused_by_name():
    with pytest.raises(ValueError, match=r"crop_faces: boxes must be \[2, 4\]"):
        crop_faces(frames_of(0), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"align_faces: landmarks must be \[2, 5, 2\]"):
        align_faces(frames_of(0), torch.zeros(2, 4, 2))
