"""identity_reward: the pool reward by hand and against identity_metrics.pool_similarity, end to end on
drawn clips, gradients only into the faces, and matching detections to people."""
import math

import numpy as np
import pytest
import torch

from identity_grpo.faces.crop import crop_faces
from identity_grpo.faces.pool_reward import (
    Detections,
    FaceLocations,
    FacePool,
    assign_detections,
    build_pool,
    identity_reward,
    pool_reward,
    pools_from_videos,
)
from identity_grpo.faces.iresnet import TINY, IResNet
from identity_grpo.faces.identity_metrics import pool_similarity

FACE = 16  # face side in pixels in the drawn clips


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_pool_reward_by_hand():
    # Video 0, two people. Person 0's pool: 0 and 90 degrees; person 1's: 180 degrees.
    #   frame 0: person 0 at 0 deg    -> cosines 1, 0          -> 0.5
    #            person 1 at 120 deg  -> cosine 0.5            -> 0.5
    #   frame 1: person 0 at 45 deg   -> cosines .7071, .7071  -> .7071
    #            person 1 missing                              -> 0 (not skipped)
    #   per person over frames: (0.5 + .7071) / 2 = .60355 and 0.25; reward .42678.
    # Video 1, one person (slot 1 is padding), pool at 53.13 deg = (0.6, 0.8); the face (3 times
    # longer, same direction) in both frames -> cosine 1 -> reward 1.
    faces = torch.tensor(
        [
            [[unit(0), unit(120)], [unit(45), [0.0, 0.0]]],
            [[[1.8, 2.4], [0.0, 0.0]], [[1.8, 2.4], [0.0, 0.0]]],
        ]
    )  # [B=2, T=2, P=2, D=2]
    present = torch.tensor([[[True, True], [True, False]], [[True, False], [True, False]]])
    pools = [
        FacePool([torch.tensor([unit(0), unit(90)]), torch.tensor([unit(180)])]),
        FacePool([torch.tensor([[0.6, 0.8]])]),
    ]
    reward = pool_reward(faces, present, pools)
    expected = ((0.5 + math.sqrt(0.5)) / 2 + 0.25) / 2
    torch.testing.assert_close(reward, torch.tensor([expected, 1.0]))


def test_pool_reward_agrees_with_identity_metrics_pool_similarity():
    rng = np.random.default_rng(0)
    faces = rng.normal(size=(1, 4, 3, 8))  # not unit length: cosines normalise
    pools = [rng.normal(size=(m, 8)) for m in (5, 1, 3)]
    reward = pool_reward(
        torch.tensor(faces, dtype=torch.float32),
        torch.ones(1, 4, 3, dtype=torch.bool),
        [FacePool([torch.tensor(p, dtype=torch.float32) for p in pools])],
    )
    expected = np.mean([pool_similarity(faces[0, :, p], pools[p]).mean() for p in range(3)])
    assert reward.item() == pytest.approx(expected, abs=1e-6)


def test_pool_reward_refuses_faces_in_padding_slots_and_empty_pools():
    pools = [FacePool([torch.ones(1, 2)])]
    with pytest.raises(ValueError, match="video 0 has faces in slots beyond its 1 people"):
        pool_reward(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, dtype=torch.bool), pools)
    with pytest.raises(ValueError, match=r"FacePool.embeddings\[1\]"):
        FacePool([torch.ones(1, 2), torch.ones(0, 2)])


def recognizer() -> IResNet:
    torch.manual_seed(0)
    return IResNet(TINY).eval().requires_grad_(False)


def drawn_clips():
    """Two 3-frame 48x48 clips: video 0 shows people A and B (B leaves in frame 2), video 1 shows C.

    -> videos [2, 3, 3, 48, 48], FaceLocations with P = 2 slots (video 1's slot 1 is padding),
    and the faces' textures [3, 3, 16, 16] (A, B, C).
    """
    generator = torch.Generator().manual_seed(1)
    videos = 0.2 * torch.rand(2, 3, 3, 48, 48, generator=generator)
    textures = torch.rand(3, 3, FACE, FACE, generator=generator)
    boxes = torch.zeros(2, 3, 2, 4)
    present = torch.zeros(2, 3, 2, dtype=torch.bool)
    for t in range(3):
        corners = [(0, 0, (4 + 2 * t, 6)), (1, 2, (10 + t, 10 + t))]  # (video, texture, (x, y))
        if t < 2:
            corners.append((0, 1, (26, 20 + 3 * t)))
        for b, face, (x, y) in corners:
            slot = 1 if face == 1 else 0
            videos[b, t, :, y : y + FACE, x : x + FACE] = textures[face]
            boxes[b, t, slot] = torch.tensor([x, y, x + FACE, y + FACE], dtype=torch.float32)
            present[b, t, slot] = True
    return videos, FaceLocations(boxes, present), textures


def own_pools(model: IResNet, videos: torch.Tensor, locations: FaceLocations) -> list[FacePool]:
    """Video 0's pools from all its frames, video 1's from C's face in its first frame only."""
    pools = pools_from_videos(model, videos[:1], FaceLocations(locations.boxes[:1], locations.present[:1]))
    first_face = crop_faces(videos[1, :1], locations.boxes[1, :1, 0], size=TINY.input_size)
    return pools + [build_pool(model, [first_face])]


def test_a_clip_scored_against_its_own_faces():
    model = recognizer()
    videos, locations, textures = drawn_clips()
    pools = own_pools(model, videos, locations)
    assert [p.num_people for p in pools] == [2, 1]
    assert [len(e) for e in pools[0].embeddings] == [3, 2]  # B is seen in two frames
    # Every face is the same texture copied pixel for pixel, so each present face has cosine 1
    # with its pool; B's missing frame counts 0: video 0 scores (1 + 2/3) / 2, video 1 scores 1.
    reward = identity_reward(model, videos, locations, pools)
    torch.testing.assert_close(reward, torch.tensor([(1 + 2 / 3) / 2, 1.0]))

    # Swapping who is who in video 0 scores the cosine between A's and B's faces instead.
    swapped = FaceLocations(locations.boxes.clone(), locations.present.clone())
    swapped.boxes[0], swapped.present[0] = locations.boxes[0].flip(1), locations.present[0].flip(1)
    embedded = model.embed(crop_faces(textures[:2], torch.tensor([[0.0, 0, FACE, FACE]] * 2), size=TINY.input_size))
    cosine = (embedded[0] @ embedded[1]).item()
    assert cosine < 0.99  # the drawn people do look different to the recognizer
    expected = (2 * cosine / 3 + cosine) / 2  # B as A in 2 of 3 frames, A as B in all 3
    assert identity_reward(model, videos, swapped, pools)[0].item() == pytest.approx(expected, abs=1e-5)


def test_gradients_reach_only_the_pixels_of_present_faces():
    model = recognizer()
    videos, locations, _ = drawn_clips()
    pools = [FacePool([torch.randn(4, 64), torch.randn(2, 64)]), FacePool([torch.randn(3, 64)])]
    videos.requires_grad_()
    identity_reward(model, videos, locations, pools).sum().backward()
    in_a_face = torch.zeros_like(videos, dtype=torch.bool)
    for b, t, p in locations.present.nonzero().tolist():
        x0, y0, x1, y1 = locations.boxes[b, t, p].int().tolist()
        assert videos.grad[b, t, :, y0:y1, x0:x1].abs().sum() > 0, (b, t, p)
        in_a_face[b, t, :, y0:y1, x0:x1] = True
    # Outside the faces only float32 rounding of grid_sample's [-1, 1] coordinates (48 is no power of two).
    assert videos.grad[~in_a_face].abs().max() < 1e-6 * videos.grad[in_a_face].abs().max()


def test_detections_are_matched_to_people():
    model = recognizer()
    videos, truth, textures = drawn_clips()
    pools = own_pools(model, videos, truth)
    # A stranger (A's texture upside down) in the bottom-left corner of every frame of video 0.
    stranger = torch.tensor([0.0, 30.0, FACE, 30 + FACE])
    videos[0, :, :, 30 : 30 + FACE, 0:FACE] = textures[0].flip(1)
    detections = [
        [Detections(torch.stack([stranger, *truth.boxes[0, t, truth.present[0, t]].flip(0)])) for t in range(3)],
        [Detections(truth.boxes[1, t, :1]) for t in range(3)],
    ]
    # The random tiny recognizer finds all drawn faces alike (cosines near 0.9), so only a
    # threshold close to 1 keeps the stranger from standing in for B when B is gone.
    found = assign_detections(model, videos, detections, pools, min_similarity=0.999)
    assert torch.equal(found.present, truth.present)
    assert torch.equal(found.boxes[found.present], truth.boxes[truth.present])
    loose = assign_detections(model, videos, detections, pools, min_similarity=0.0)
    assert loose.present[0, 2, 1] and torch.equal(loose.boxes[0, 2, 1], stranger)


def test_a_recognizer_in_training_mode_is_refused():
    videos, locations, _ = drawn_clips()
    with pytest.raises(ValueError, match="training mode"):
        identity_reward(IResNet(TINY), videos, locations, [FacePool([torch.ones(1, 64)])] * 2)
