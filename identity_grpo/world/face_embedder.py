"""The synthetic world's differentiable identity embedder: a small IResNet (iresnet.TINY) trained on
the world's faces, standing in for ArcFace on the CPU.

Training data: crops of *training* identities, cut with ipro.face_crop.crop_faces (the crop the
reward takes) from rendered clips (random background, pose, scale, blink) and from reference
images (the person on white), degraded the way generated clips are (blur, noise, a little colour
and box jitter: boxes come from a detector, not from the renderer).

Objective: a world identity *is* its seven attributes (identities.py), so the embedder learns
them: one cosine classifier per attribute on the unit embedding, with an additive margin
(CosFace, the ArcFace family's loss). Faces of one person then share a direction in every
attribute's subspace and the cosine of two faces grows with the attributes they share, which
carries over to held-out identities (new combinations of known attributes). The shirt is part of
a world identity and the crop's margin takes in its top rows, so it is learned too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from identity_grpo.core.config_io import check_options, require_at_least, require_positive
from identity_grpo.faces.crop import crop_faces
from identity_grpo.faces.iresnet import IResNet, IResNetConfig
from identity_grpo.world.clips import sample_clip
from identity_grpo.world.identities import (
    ACCESSORIES,
    EYE_COLOURS,
    HAIR_COLOURS,
    HAIR_STYLES,
    HEAD_SHAPES,
    SHIRT_COLOURS,
    SKIN_TONES,
    Identity,
    sample_identities,
)
from identity_grpo.world.render import face_box, render_reference

# Identity field -> its possible values (the classes of that attribute's classifier).
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "skin": tuple(SKIN_TONES), "hair_colour": tuple(HAIR_COLOURS), "hair_style": HAIR_STYLES,
    "eye_colour": tuple(EYE_COLOURS), "head_shape": HEAD_SHAPES, "accessory": ACCESSORIES,
    "shirt_colour": tuple(SHIRT_COLOURS),
}


@dataclass
class EmbedderTraining:
    """How the embedder is trained (part of the world face models' cache key)."""

    iresnet: IResNetConfig = field(default_factory=lambda: IResNetConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64),
                                                                         embedding_dim=64, input_size=32))
    steps: int = 500
    clips_per_step: int = 48  # each gives one crop of each of its 1-3 people
    references_per_step: int = 32
    lr: float = 3e-3
    cos_scale: float = 16.0  # CosFace s
    cos_margin: float = 0.2  # CosFace m
    crop_margin: float = 0.25  # crop_faces margin: the crop takes in the hairline above and the shirt's top
    frame_height: int = 48  # the clips the faces are cut from (the toy generators' size)
    frame_width: int = 64
    max_blur: float = 1.2  # Gaussian blur sigma in pixels, uniform in [0, max_blur]
    max_noise: float = 0.04  # pixel noise std (pixels in [0, 1]), uniform in [0, max_noise]
    box_jitter: float = 0.08  # box centre shift and size change, as a fraction of the box side

    def validate(self) -> None:
        check_options("iresnet", self.iresnet)
        require_at_least("", self, 1, "steps", "clips_per_step", "references_per_step", "frame_height", "frame_width")
        require_positive("", self, "lr", "cos_scale")


def attribute_labels(people: list[Identity]) -> torch.Tensor:
    """[N, 7] long: each person's attribute indices, in ATTRIBUTE_VALUES order."""
    return torch.tensor([[values.index(getattr(p, name)) for name, values in ATTRIBUTE_VALUES.items()] for p in people])


def degrade(frames: torch.Tensor, settings: EmbedderTraining, rng: np.random.Generator) -> torch.Tensor:
    """frames [N, 3, H, W] in [0, 1] -> blurred (per-frame sigma), noised and colour-jittered copies."""
    out = []
    for frame in frames:
        sigma = rng.uniform(0, settings.max_blur)
        if sigma > 0.2:
            radius = int(np.ceil(2 * sigma))
            taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
            taps = (taps / taps.sum()).to(frame)
            padded = F.pad(frame[:, None], (radius, radius, radius, radius), mode="replicate")
            frame = F.conv2d(F.conv2d(padded, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))[:, 0]
        gain = torch.tensor(rng.uniform(0.93, 1.07, size=(3, 1, 1)), dtype=frame.dtype)
        noise = torch.from_numpy(rng.normal(0, rng.uniform(0, settings.max_noise), frame.shape)).to(frame.dtype)
        out.append((frame * gain + noise).clamp(0, 1))
    return torch.stack(out)


def jitter_boxes(boxes: torch.Tensor, amount: float, rng: np.random.Generator) -> torch.Tensor:
    """boxes [N, 4] -> boxes with centres moved and sides scaled by up to `amount` of the side."""
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    shift = torch.from_numpy(rng.uniform(-amount, amount, (len(boxes), 2))).float() * side[:, None]
    scale = torch.from_numpy(rng.uniform(1 - amount, 1 + amount, len(boxes))).float()
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + shift
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale[:, None]
    return torch.cat([centre - half, centre + half], dim=1)


def training_faces(rng: np.random.Generator, settings: EmbedderTraining, split: str = "train",
                   augment: bool = True) -> tuple[torch.Tensor, list[Identity]]:
    """One batch of face crops [N, 3, S, S] in [0, 1] of `split` identities, and who they are."""
    frames, boxes, people = [], [], []
    for _ in range(settings.clips_per_step):
        clip = sample_clip(rng, sample_identities(rng, int(rng.integers(1, 4)), split), num_frames=2,
                           height=settings.frame_height, width=settings.frame_width)
        t = int(rng.integers(2))
        for p, person in enumerate(clip.identities):
            frames.append(clip.frames[t])
            boxes.append(clip.boxes[t, p])
            people.append(person)
    crops = _crop(frames, boxes, settings, rng, augment)
    references, reference_boxes, reference_people = [], [], []
    size = settings.iresnet.input_size
    scale = size / 30.0  # render_reference's drawing scale
    box = face_box(np.float32(size / 2.0), np.float32(12.8 * scale), np.float32(scale))
    for _ in range(settings.references_per_step):
        person = sample_identities(rng, 1, split)[0]
        references.append(render_reference(person, size))
        reference_boxes.append(box)
        reference_people.append(person)
    crops = torch.cat([crops, _crop(references, reference_boxes, settings, rng, augment)])
    return crops, people + reference_people


def _crop(images: list[np.ndarray], boxes: list[np.ndarray], settings: EmbedderTraining, rng: np.random.Generator,
          augment: bool) -> torch.Tensor:
    frames = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    boxes = torch.from_numpy(np.stack(boxes)).float()
    if augment:
        frames, boxes = degrade(frames, settings, rng), jitter_boxes(boxes, settings.box_jitter, rng)
    return crop_faces(frames, boxes, settings.iresnet.input_size, settings.crop_margin)


class AttributeHeads(torch.nn.Module):
    """One cosine classifier per attribute over unit embeddings (dropped after training)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(len(values), dim) * 0.1) for values in ATTRIBUTE_VALUES.values()]
        )

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, scale: float, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean CosFace loss over attributes, [7] accuracy per attribute)."""
        losses, accuracy = [], []
        for a, weight in enumerate(self.weights):
            cosine = embeddings @ F.normalize(weight, dim=-1).T
            target = labels[:, a]
            logits = scale * (cosine - margin * F.one_hot(target, len(weight)))
            losses.append(F.cross_entropy(logits, target))
            accuracy.append((cosine.argmax(-1) == target).float().mean())
        return torch.stack(losses).mean(), torch.stack(accuracy)


def train_embedder(settings: EmbedderTraining, seed: int = 0, progress: bool = True) -> tuple[IResNet, dict]:
    """A frozen (eval mode, no gradients) embedder and its training record (losses, held-out accuracy)."""
    settings.validate()
    rng = np.random.default_rng([seed, 11])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, heads = IResNet(settings.iresnet), AttributeHeads(settings.iresnet.embedding_dim)
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.steps, pct_start=0.1)
    losses = []
    bar = tqdm(range(settings.steps), desc="world face embedder", disable=not progress)
    model.train()
    for _ in bar:
        crops, people = training_faces(rng, settings)
        loss, _ = heads.loss(model.embed(crops), attribute_labels(people), settings.cos_scale, settings.cos_margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval().requires_grad_(False)
    with torch.no_grad():
        crops, people = training_faces(np.random.default_rng([seed, 12]), settings, split="heldout")
        _, accuracy = heads.loss(model.embed(crops), attribute_labels(people), settings.cos_scale, settings.cos_margin)
    record = {"losses": losses, "heldout_attribute_accuracy": dict(zip(ATTRIBUTE_VALUES, accuracy.tolist()))}
    return model, record
