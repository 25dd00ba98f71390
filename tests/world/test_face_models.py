"""The synthetic world's face reward: detector targets and decoding by hand, the cached face models,
pools from rendered ground-truth clips, and the reward end to end (with gradients to the pixels)."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from identity_grpo.world import face_models as world_faces
from identity_grpo.faces.pool_reward import Detections
from identity_grpo.world.face_detector import HeadDetector, detector_loss, targets
from identity_grpo.world.face_embedder import attribute_labels, jitter_boxes
from identity_grpo.world.face_models import WorldFaceSettings, cache_folder, world_face_models, world_face_reward, world_pool
from identity_grpo.core.prompt_manifest import load_prompt_manifest
from identity_grpo.world.prompt_manifests import world_identities, write_world_manifests
from identity_grpo.world.clips import sample_clip
from identity_grpo.world.identities import identity_from_id, identity_to_id
from tests_support import tiny_world_face_settings


def test_targets_by_hand():
    # An 8 x 8 frame -> a 4 x 4 grid of 2 x 2 cells with centres at pixels 0.5, 2.5, 4.5, 6.5.
    # Box (2, 2, 6, 8): centre (4, 5) -> cell (row 2, col 2) at (4.5, 4.5); offset (-0.25, 0.25)
    # cells; height 6 -> 6 / 32.
    t = targets([np.array([[2.0, 2.0, 6.0, 8.0]])], 8, 8, sigma=1.0)
    assert t["centre"].nonzero().tolist() == [[0, 2, 2]]
    torch.testing.assert_close(t["offset"][0, :, 2, 2], torch.tensor([-0.25, 0.25]))
    assert t["side"][0, 2, 2] == 6 / 32 and t["heat"][0, 2, 2] == 1.0
    # A neighbour cell: distance from (4, 5) to (2.5, 4.5) is sqrt(2.5) -> exp(-2.5 / 2).
    torch.testing.assert_close(t["heat"][0, 2, 1], torch.tensor(np.exp(-1.25), dtype=torch.float32))


def crafted(peaks: list[tuple[int, int, float, float, float, float]]) -> torch.Tensor:
    """A detector output [1, 4, 4, 4] with (row, col, logit, dx, dy, side) at each peak, -20 elsewhere."""
    out = torch.zeros(1, 4, 4, 4)
    out[0, 0] = -20.0
    for row, col, logit, dx, dy, side in peaks:
        out[0, :, row, col] = torch.tensor([logit, dx, dy, side])
    return out


def test_detections_decode_by_hand(monkeypatch):
    model = HeadDetector()
    output = crafted([(2, 2, 5.0, -0.25, 0.25, 6 / 32), (0, 0, 1.0, 0.0, 0.0, 0.25), (0, 3, -3.0, 0.0, 0.0, 0.5)])
    monkeypatch.setattr(model, "forward", lambda frames: output)
    found = model.detect(torch.zeros(1, 3, 8, 8), max_faces=3, threshold=0.3)[0]
    # Best first: centre (4.5 - 0.5, 4.5 + 0.5) = (4, 5), side 6; then (0.5, 0.5), side 8; the third is below threshold.
    torch.testing.assert_close(found.boxes, torch.tensor([[1.0, 2.0, 7.0, 8.0], [-3.5, -3.5, 4.5, 4.5]]))
    assert len(model.detect(torch.zeros(1, 3, 8, 8), max_faces=1, threshold=0.3)[0].boxes) == 1


def test_detector_loss_vanishes_at_the_targets_only():
    t = targets([np.array([[2.0, 2.0, 6.0, 8.0]])], 8, 8, sigma=1.0)
    perfect = torch.stack([torch.where(t["centre"], 20.0, -20.0)[0], t["offset"][0, 0], t["offset"][0, 1], t["side"][0]])[None]
    assert detector_loss(perfect, t) < 1e-3
    shifted = perfect.clone()
    shifted[0, 0] = torch.roll(perfect[0, 0], 1, dims=1)
    assert detector_loss(shifted, t) > 1.0


def test_attribute_labels_and_box_jitter():
    person = identity_from_id(identity_to_id("tan", "red", "curly", "green", "wide", "hat", "blue"))
    assert attribute_labels([person]).tolist() == [[2, 3, 3, 2, 2, 2, 6]]
    boxes = torch.tensor([[10.0, 10.0, 30.0, 32.0]])
    moved = jitter_boxes(boxes.repeat(50, 1), 0.1, np.random.default_rng(0))
    side = 22.0
    centre_shift = ((moved[:, :2] + moved[:, 2:]) / 2 - torch.tensor([20.0, 21.0])).abs()
    assert centre_shift.max() <= 0.1 * side + 1e-5 and centre_shift.max() > 0.5
    scale = (moved[:, 3] - moved[:, 1]) / 22.0
    assert scale.min() >= 0.9 - 1e-6 and scale.max() <= 1.1 + 1e-6


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return replace(tiny_world_face_settings(tmp_path_factory.mktemp("world_faces")), pool_clips=2, pool_frames=3)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    train, _ = write_world_manifests(tmp_path_factory.mktemp("world_prompts"), num_train=2, num_heldout=1)
    return load_prompt_manifest(train)


def test_models_are_trained_once_and_cached_by_their_settings(settings, monkeypatch):
    embedder, detector = world_face_models(settings, progress=False)
    folder = cache_folder(settings)
    record = json.loads((folder / "faces.json").read_text())
    assert len(record["embedder"]["losses"]) == 2 and "heldout_recall_2px" in record["detector"]
    assert not embedder.training and not any(p.requires_grad for p in detector.parameters())
    monkeypatch.setattr(world_faces, "train_embedder", lambda *a, **k: pytest.fail("retrained a cached embedder"))
    again, _ = world_face_models(settings, progress=False)
    for a, b in zip(embedder.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    other = WorldFaceSettings(**{**vars(settings), "seed": 1})
    assert cache_folder(other) != folder and cache_folder(other).parent == folder.parent


def test_pools_are_the_prompts_people_in_rendered_clips(settings, records):
    embedder, _ = world_face_models(settings, progress=False)
    record = records[0]
    pool = world_pool(embedder, record, settings)
    assert pool.num_people == len(record.references) and pool.dim == 16
    assert [len(p) for p in pool.embeddings] == [2 * 3] * pool.num_people  # every frame of every pool clip
    again = world_pool(embedder, record, settings)
    assert all(torch.equal(a, b) for a, b in zip(pool.embeddings, again.embeddings))  # a prompt's pool is fixed


def test_reward_end_to_end_passes_gradients_to_the_pixels(settings, records):
    reward = world_face_reward(settings, progress=False)
    reward.extra_faces = 0
    people = world_identities(records[0])
    clip = sample_clip(np.random.default_rng(5), people, num_frames=3, height=48, width=64)
    # The renderer's boxes: this test is about the reward, not the detector.
    reward.locate = lambda frames, most: [Detections(torch.from_numpy(b)) for b in clip.boxes]
    videos = (torch.from_numpy(clip.frames).float() / 255)[None].requires_grad_(True)
    value = reward(videos, records[:1])
    assert value.shape == (1,) and torch.isfinite(value).all()
    value.sum().backward()
    assert videos.grad.abs().sum() > 0
    inside = torch.zeros(48, 64, dtype=torch.bool)
    for x0, y0, x1, y1 in clip.boxes.reshape(-1, 4):  # crops with margin 0.25 around the boxes
        side = max(x1 - x0, y1 - y0) * 1.5
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        inside[max(0, int(cy - side / 2) - 1): int(cy + side / 2) + 2, max(0, int(cx - side / 2) - 1): int(cx + side / 2) + 2] = True
    assert videos.grad[0, :, ~inside].abs().max() == 0  # nothing outside the faces' crops
