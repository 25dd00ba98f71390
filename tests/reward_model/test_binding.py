import math

import numpy as np
import pytest
import torch

from identity_grpo.world.clips import Clip, sample_clip
from identity_grpo.world.identities import FACE_ATTRIBUTES, face_differences, identity_from_id, is_heldout
from reward_model.binding import (ABSENT, MAX_PEOPLE, BindingExample, BindingHeads, binding_example,
                                  lookup_loss, mean_per_person, person_cells)
from reward_model.prompting import RewardBatch


def people(*ids):
    return [identity_from_id(i) for i in ids]


def test_labels_by_hand():
    p0, p1, p2, stranger = people(10, 20, 30, 40)
    clip = Clip(np.zeros((8, 48, 64, 3), np.uint8), np.zeros((8, 3, 4), np.float32), [p0, p1, p2], "")
    # references in prompt order: the rightmost person, a distractor, the leftmost person
    example = BindingExample(clip, [p2, stranger, p0], [2, ABSENT, 0])
    assert example.matched == [1, 0, 1]  # the middle person has no reference
    assert example.num_absent == 1
    two = BindingExample(Clip(clip.frames, clip.boxes[:, :2], [p0, p1], ""), [stranger, stranger], [ABSENT, ABSENT])
    assert two.matched == [0, 0] and two.num_absent == 2


def test_references_are_the_clip_people_or_distractors_that_only_a_comparison_tells_apart():
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(60):
        example = binding_example(rng, 0.5, 2, 48, 64)
        shown = example.clip.identities
        assert sorted(s for s in example.slots if s != ABSENT) == sorted(set(s for s in example.slots if s != ABSENT))
        for reference, slot in zip(example.references, example.slots):
            assert not is_heldout(reference.id)
            if slot != ABSENT:
                assert reference == shown[slot]
                continue
            assert reference not in shown
            # its own person: the one slot no reference names, whose face or shirt it nearly repeats
            changed = min(face_differences(reference, p) + (reference.shirt_colour != p.shirt_colour) for p in shown)
            look_alike = any(face_differences(reference, p) in (1, 2, 3) and reference.shirt_colour == p.shirt_colour
                             for p in shown)
            other_shirt = any(face_differences(reference, p) == 0 for p in shown)
            assert look_alike or other_shirt, (reference, shown)
            assert 1 <= changed <= len(FACE_ATTRIBUTES)
            kinds.add("look-alike" if look_alike else "shirt")
    assert kinds == {"look-alike", "shirt"}


def test_person_cells_by_hand():
    # 48 x 64 frames, 3 x 4 merged tokens of 16 px: centres y 8, 24, 40 and x 8, 24, 40, 56
    boxes = np.zeros((4, 2, 4), np.float32)
    boxes[:, 0] = (0, 0, 20, 30)  # covers centres x 8 (and not 24 > 20), y 8 and 24
    boxes[:, 1] = (34, 20, 60, 44)  # x 40, 56; y 24, 40
    boxes[2, 1] = (50, 0, 63, 10)  # the second temporal patch starts at frame 2: x 56, y 8
    clip = Clip(np.zeros((4, 48, 64, 3), np.uint8), boxes, people(1, 2), "")
    cells = person_cells(clip, [2, 6, 8], merge=2, temporal_patch=2, num_frames=4)
    grid = cells.reshape(2, 2, 3, 4)
    expected0 = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    expected1 = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(grid[0, 0], expected0) and torch.equal(grid[0, 1], expected0)
    assert torch.equal(grid[1, 0], expected1)
    assert torch.equal(grid[1, 1], torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool))
    states = torch.arange(24, dtype=torch.float32)[:, None]  # token k holds the value k
    # person 0: tokens 0, 4 (first patch) and 12, 16 (second) -> mean 8
    assert mean_per_person(states, cells)[0].item() == 8.0


def test_slot_logits_pad_missing_people_and_let_absent_compete():
    heads = BindingHeads(hidden=8, width=4)
    logits = heads.slot_logits(torch.randn(2, 8), torch.randn(3, 8))
    assert logits.shape == (3, MAX_PEOPLE + 1)
    assert (logits[:, 2] == -1e4).all() and (logits[:, 3] == 0).all()  # no third person; ABSENT scores 0 at start


def test_lookup_loss_by_hand():
    # one clip of two people; references in prompt order: person 1, then a distractor (person 0 has none)
    p0, p1, stranger = people(10, 20, 40)
    boxes = np.zeros((2, 2, 4), np.float32)
    boxes[:, 0] = (0, 0, 10, 10)  # the first merged token (centre 8, 8)
    boxes[:, 1] = (20, 0, 30, 10)  # the second (centre 24, 8)
    clip = Clip(np.zeros((2, 16, 32, 3), np.uint8), boxes, [p0, p1], "")
    example = BindingExample(clip, [p1, stranger], [1, ABSENT])
    # tokens: 0 text, 1-2 reference 1, 3-4 reference 2, 5-6 the video (one temporal patch of 1 x 2 merged tokens)
    types = torch.tensor([[0, 1, 1, 1, 1, 2, 2]])
    batch = RewardBatch(torch.zeros(1, 7, dtype=torch.long), torch.ones(1, 7, dtype=torch.long), types,
                        torch.tensor([6]), None, None, None, torch.tensor([[1, 2, 4]]), None)
    attention = torch.zeros(1, 7, 7)
    attention[0, 6] = torch.tensor([0.1, 0.3, 0.2, 0.4, 0.0, 0.0, 0.0])  # person 1: 0.5 on their reference, 0.4 elsewhere
    attention[0, 5] = torch.tensor([0.7, 0.1, 0.0, 0.1, 0.1, 0.0, 0.0])  # person 0 (absent): 0.3 on references
    loss, accuracy = lookup_loss(attention, batch, [example], merge=2, temporal_patch=2, num_frames=2)
    assert loss.item() == pytest.approx((-math.log(0.5 + 1e-6) - math.log(0.7 + 1e-6)) / 2, rel=1e-5)
    assert accuracy == {"lookup": 1.0, "lookup_absent": 1.0}
    attention[0, 6] = torch.tensor([0.0, 0.1, 0.1, 0.8, 0.0, 0.0, 0.0])  # looks at the distractor instead
    attention[0, 5] = torch.tensor([0.2, 0.4, 0.0, 0.4, 0.0, 0.0, 0.0])  # 0.8 on references
    assert lookup_loss(attention, batch, [example], merge=2, temporal_patch=2, num_frames=2)[1] == {
        "lookup": 0.0, "lookup_absent": 0.0}
