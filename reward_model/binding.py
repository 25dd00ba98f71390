"""The binding task the tiny synthetic backbone is pretrained on: which reference is in the clip.

A clean clip of 2-3 training identities comes with one reference per person, in random order,
but some references are *distractors*: a look-alike of the person (1-3 face attributes changed,
the same shirt) or the person in another shirt. Nothing in the clip or in a reference alone
tells a distractor apart, so the task can only be solved by comparing each reference with the
people of the clip, which is what the reward has to do for strangers, swaps and wrong references.

Labels (worked out in the tests by hand) and where they are read:
- per reference, in prompt order: the slot (0 = leftmost person) of the person it shows, or
  ABSENT (a distractor); scored by the similarity of the reference's vision features to each
  person's (the language model's input under the person's face box), against a learned ABSENT
  score: this pulls the two views of one person together, so attention can find them;
- per person of the clip, left to right: 1 when one of the references shows them, read from the
  language model's last hidden states under the person's face box (the clip comes after the
  references, so these tokens can attend to every reference; a reference token cannot see the clip);
- per clip: how many references are absent (0..3), read from the reward token, the position the
  reward head reads later, so the comparison ends up where the reward needs it;
- per person of the clip, the attention of one head (`lookup_loss`): from the person's tokens,
  all its weight on the tokens of the reference that shows them, none on any reference when no
  reference does. Without it the read-outs above stayed at their base rates for 1000 steps (the
  language model never found the lookup by itself, measured with and without a larger rotary
  base); with it the head finds the right reference for 99.9% of present people on held-out
  identities within 500 steps, and the read-outs leave their base rates at ~600 steps. (Keeping an
  absent person's weight off every reference stays hard: about half of them, measured.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from identity_grpo.world import identities as world
from identity_grpo.world.clips import Clip, sample_clip
from identity_grpo.world.identities import Identity, identity_from_id, identity_to_id, look_alike, sample_identities
from reward_model.prompting import IMAGE, VIDEO, RewardBatch, sample_frame_indices

ABSENT = -1  # the slot of a reference whose person is not in the clip
MAX_PEOPLE = 3
LOOK_ALIKE_SHARE = 0.7  # distractors that are look-alikes; the rest are the person in another shirt


@dataclass
class BindingExample:
    clip: Clip  # a clean clip; clip.identities are its people left to right
    references: list[Identity]  # in prompt order: the clip's people or distractors
    slots: list[int]  # per reference: the slot of the person it shows, or ABSENT

    @property
    def matched(self) -> list[int]:
        """Per person of the clip, left to right: 1 if a reference shows them."""
        return [int(slot in self.slots) for slot in range(len(self.clip.identities))]

    @property
    def num_absent(self) -> int:
        return sum(slot == ABSENT for slot in self.slots)


def other_shirt(rng: np.random.Generator, person: Identity, others: list[Identity]) -> Identity:
    """`person` with a shirt colour neither they nor the people beside them wear (training split)."""
    taken = {p.shirt_colour for p in [person, *others]}
    for colour in rng.permutation(list(world.SHIRT_COLOURS)):
        if colour in taken:
            continue
        values = {name: getattr(person, name) for name in world.FACE_ATTRIBUTES}
        candidate = identity_from_id(identity_to_id(**values, shirt_colour=str(colour)))
        if not world.is_heldout(candidate.id):
            return candidate
    return look_alike(rng, person, 1, others)  # every free shirt lands in the held-out split: a face change


def distractor(rng: np.random.Generator, person: Identity, others: list[Identity]) -> Identity:
    if rng.uniform() < LOOK_ALIKE_SHARE:
        return look_alike(rng, person, int(rng.integers(1, 4)), others)
    return other_shirt(rng, person, others)


def binding_example(rng: np.random.Generator, distractor_share: float, num_frames: int, height: int,
                    width: int) -> BindingExample:
    people = sample_identities(rng, int(rng.integers(2, MAX_PEOPLE + 1)), "train")
    clip = sample_clip(rng, people, num_frames=num_frames, height=height, width=width)
    references, slots = [], []
    for slot, person in enumerate(people):
        others = people[:slot] + people[slot + 1 :]
        if rng.uniform() < distractor_share:
            references.append(distractor(rng, person, others))
            slots.append(ABSENT)
        else:
            references.append(person)
            slots.append(slot)
    order = rng.permutation(len(people))
    return BindingExample(clip, [references[i] for i in order], [slots[i] for i in order])


def binding_examples(rng: np.random.Generator, batch_size: int, distractor_share: float, num_frames: int,
                     height: int, width: int) -> list[BindingExample]:
    return [binding_example(rng, distractor_share, num_frames, height, width) for _ in range(batch_size)]


def person_cells(clip: Clip, grid_thw: list[int], merge: int, temporal_patch: int, num_frames: int) -> torch.Tensor:
    """Which merged video tokens lie under each person's face box: bool [P, t * h * w] (token order
    t, h, w as the processor lays them out); a temporal patch uses the box of its first frame."""
    t, h, w = grid_thw[0], grid_thw[1] // merge, grid_thw[2] // merge
    cell_h, cell_w = clip.frames.shape[1] / h, clip.frames.shape[2] / w
    centres_y, centres_x = (torch.arange(h) + 0.5) * cell_h, (torch.arange(w) + 0.5) * cell_w
    frames = sample_frame_indices(len(clip.frames), num_frames)
    masks = torch.zeros(len(clip.identities), t, h, w, dtype=torch.bool)
    for k in range(t):
        for p, (x0, y0, x1, y1) in enumerate(clip.boxes[frames[k * temporal_patch]]):
            masks[p, k] = ((centres_y >= y0) & (centres_y <= y1))[:, None] & ((centres_x >= x0) & (centres_x <= x1))[None]
    return masks.reshape(len(clip.identities), -1)


class BindingHeads(nn.Module):
    """Read-outs of the binding labels (dropped after pretraining)."""

    def __init__(self, hidden: int, width: int = 64):
        super().__init__()
        # Reference <-> person similarity of the vision features: pulls the two views of one person
        # together, so that attention in the language model can find a reference's person.
        self.person_key = nn.Linear(hidden, width)
        self.reference_query = nn.Linear(hidden, width)
        self.absent_score = nn.Parameter(torch.zeros(()))  # the score ABSENT competes with
        self.matched = nn.Linear(hidden, 2)  # person tokens (last layer) -> shown by a reference?
        self.num_absent = nn.Linear(hidden, MAX_PEOPLE + 1)  # reward token (last layer) -> how many references are absent

    def slot_logits(self, people: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """people [P, H], references [R, H] (vision features) -> [R, MAX_PEOPLE + 1]: the P slots, padding, ABSENT."""
        scores = self.reference_query(references) @ self.person_key(people).T / self.person_key.out_features**0.5
        padding = scores.new_full((len(references), MAX_PEOPLE - len(people)), -1e4)
        return torch.cat([scores, padding, self.absent_score.expand(len(references), 1)], 1)


def mean_per_person(states: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """states [t*h*w, H], cells bool [P, t*h*w] -> [P, H]."""
    weights = cells.to(states.dtype).to(states.device)
    return weights @ states / weights.sum(1, keepdim=True).clamp(min=1)


def lookup_loss(attention: torch.Tensor, batch: RewardBatch, examples: list[BindingExample], merge: int,
                temporal_patch: int, num_frames: int) -> tuple[torch.Tensor, dict[str, float]]:
    """attention [B, L, L]: one head's weights (row: the attending token). Per person of each clip, the
    mean over their tokens of -log(weight on the tokens of their reference), or of -log(1 - weight
    on every reference) when no reference shows them. -> (loss, accuracies): `lookup` (present
    people whose largest reference weight is on their own reference) and `lookup_absent` (absent
    people with under half their weight on references)."""
    terms, found, refused = [], [], []
    for row, example in enumerate(examples):
        types = batch.mm_token_type_ids[row]
        references = torch.nonzero(types == IMAGE).squeeze(1).chunk(len(example.references))  # token positions
        video = torch.nonzero(types == VIDEO).squeeze(1)
        cells = person_cells(example.clip, batch.video_grid_thw[row].tolist(), merge, temporal_patch, num_frames)
        for slot in range(len(example.clip.identities)):
            tokens = video[cells[slot].to(video.device)]
            if not len(tokens):
                continue
            weights = torch.stack([attention[row][tokens][:, ref].sum(-1) for ref in references], -1)  # [n, R]
            if slot in example.slots:
                own = example.slots.index(slot)
                terms.append(-torch.log(weights[:, own] + 1e-6).mean())
                found.append((weights.argmax(-1) == own).float().mean().item())
            else:
                terms.append(-torch.log((1 - weights.sum(-1)).clamp(min=0) + 1e-6).mean())
                refused.append((weights.sum(-1) < 0.5).float().mean().item())
    accuracies = {"lookup": float(np.mean(found)) if found else float("nan"),
                  "lookup_absent": float(np.mean(refused)) if refused else float("nan")}
    return torch.stack(terms).mean(), accuracies


def binding_losses(heads: BindingHeads, vision: torch.Tensor, hidden: torch.Tensor, batch: RewardBatch,
                   examples: list[BindingExample], merge: int, temporal_patch: int,
                   num_frames: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """vision [B, L, H]: the language model's input (vision features at the vision tokens);
    hidden [B, L, H]: its last hidden states. -> (losses, accuracies)."""
    device = hidden.device
    slot_logits, slot_targets, matched_logits, matched_targets = [], [], [], []
    for row, example in enumerate(examples):
        types = batch.mm_token_type_ids[row]
        cells = person_cells(example.clip, batch.video_grid_thw[row].tolist(), merge, temporal_patch, num_frames)
        people = mean_per_person(vision[row][types == VIDEO], cells)  # [P, H]
        references = torch.stack([c.mean(0) for c in vision[row][types == IMAGE].chunk(len(example.references))])
        slot_logits.append(heads.slot_logits(people, references))
        slot_targets += [MAX_PEOPLE if s == ABSENT else s for s in example.slots]
        matched_logits.append(heads.matched(mean_per_person(hidden[row][types == VIDEO], cells)))
        matched_targets += example.matched
    slot_logits, matched_logits = torch.cat(slot_logits), torch.cat(matched_logits)
    slot_targets = torch.tensor(slot_targets, device=device)
    matched_targets = torch.tensor(matched_targets, device=device)
    absent_logits = heads.num_absent(hidden[torch.arange(len(examples), device=device), batch.reward_index])
    absent_targets = torch.tensor([e.num_absent for e in examples], device=device)
    losses = {"reference": F.cross_entropy(slot_logits, slot_targets),
              "matched": F.cross_entropy(matched_logits, matched_targets),
              "absent": F.cross_entropy(absent_logits, absent_targets)}
    with torch.no_grad():
        accuracies = {name: (logits.argmax(1) == targets).float().mean().item() for name, logits, targets in (
            ("reference", slot_logits, slot_targets), ("matched", matched_logits, matched_targets),
            ("absent", absent_logits, absent_targets))}
    return losses, accuracies
