"""The synthetic world's face detector: where heads are in a frame, found without gradients.

Generated clips are not renders, so where a person's face is must be read from the pixels. A
small fully convolutional net, trained on rendered clips of training identities (the renderer
gives every face box) degraded like generated clips, predicts at half resolution a heat map of
face-box centres and the box height; peaks are the detections. It knows what a head looks like,
not who it is: which detection is which person is decided afterwards by the recognizer
(identity_reward.assign_detections), as with a real detector. The world's identity measure is
not used here, so it stays independent of everything the reward sees.

Boxes come out square (side = the predicted height): crop_faces squares every box with its
longer side, and a world face box is taller than wide, so the crop is the one the true box gives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from identity_grpo.core.config_io import require_at_least, require_positive
from identity_grpo.faces.pool_reward import Detections
from identity_grpo.world.face_embedder import EmbedderTraining, degrade
from identity_grpo.world.clips import sample_clip
from identity_grpo.world.identities import sample_identities

STRIDE = 2  # the heat map's cell is STRIDE x STRIDE pixels
SIDE_UNIT = 32.0  # the height channel predicts box height / SIDE_UNIT pixels
QUALITY_THRESHOLD = 0.3  # the peak height detector_quality counts as a detection


@dataclass
class DetectorTraining:
    steps: int = 400
    frames_per_step: int = 32
    lr: float = 3e-3
    heat_sigma: float = 1.5  # pixels: the spread of a centre's target peak (CenterNet's penalty reduction)
    max_people: int = 3  # clips drawn during training have 1..max_people people

    def validate(self) -> None:
        require_at_least("", self, 1, "steps", "frames_per_step", "max_people")
        require_positive("", self, "lr", "heat_sigma")


class HeadDetector(nn.Module):
    """CenterNet-style: frames [N, 3, H, W] in [0, 1] -> [N, 4, H/2, W/2]: centre logit, the centre's
    offset from the cell centre (x, y, in cells) and the box height / SIDE_UNIT.

    An encoder to 1/4 resolution with dilated convolutions sees ~80 pixels (two to three heads,
    so a peak can tell a head from a shirt or a stripe); the half-resolution features come back
    through a skip connection for a sharp peak."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        act = nn.SiLU
        self.stem = nn.Sequential(nn.Conv2d(3, width // 2, 3, padding=1), act(),
                                  nn.Conv2d(width // 2, width, 3, stride=STRIDE, padding=1), act())
        self.context = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), act(),
                                     nn.Conv2d(2 * width, 2 * width, 3, padding=2, dilation=2), act(),
                                     nn.Conv2d(2 * width, 2 * width, 3, padding=4, dilation=4), act())
        self.head = nn.Sequential(nn.Conv2d(3 * width, width, 3, padding=1), act(), nn.Conv2d(width, 4, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        fine = self.stem(frames * 2 - 1)
        coarse = F.interpolate(self.context(fine), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([fine, coarse], dim=1))

    @torch.no_grad()
    def detect(self, frames: torch.Tensor, max_faces: int, threshold: float) -> list[Detections]:
        """frames [N, 3, H, W] in [0, 1] -> per frame up to max_faces square face boxes (best first)."""
        out = self(frames.float())
        heat = torch.sigmoid(out[:, 0])
        peaks = (heat == F.max_pool2d(heat[:, None], 3, stride=1, padding=1)[:, 0]) & (heat >= threshold)
        ys, xs = cell_centres(heat.shape[1]).to(heat.device), cell_centres(heat.shape[2]).to(heat.device)
        detections = []
        for n in range(len(frames)):
            rows, cols = peaks[n].nonzero(as_tuple=True)
            order = heat[n, rows, cols].argsort(descending=True)[:max_faces]
            rows, cols = rows[order], cols[order]
            cx = xs[cols] + out[n, 1, rows, cols] * STRIDE
            cy = ys[rows] + out[n, 2, rows, cols] * STRIDE
            half = out[n, 3, rows, cols] * SIDE_UNIT / 2
            detections.append(Detections(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).float().cpu()))
        return detections


def cell_centres(cells: int) -> torch.Tensor:
    """Pixel coordinate of each heat-map cell's centre along one axis (pixel k's centre is k)."""
    return torch.arange(cells, dtype=torch.float32) * STRIDE + (STRIDE - 1) / 2


def box_centres(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 4] boxes -> [..., 2] (x, y) in crop_faces' convention: the box is pixels x0 <= x < x1."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def targets(boxes: list[np.ndarray], height: int, width: int, sigma: float) -> dict[str, torch.Tensor]:
    """Per frame its face boxes [P, 4] -> CenterNet targets on the [N, H/2, W/2] grid: "heat" (a
    Gaussian about each centre, max over people), "centre" (bool, the cell holding a centre),
    "offset" [N, 2, h, w] (centre minus cell centre, in cells) and "side" (box height / SIDE_UNIT)."""
    ys, xs = cell_centres(height // STRIDE), cell_centres(width // STRIDE)
    heat = torch.zeros(len(boxes), len(ys), len(xs))
    centre = torch.zeros_like(heat, dtype=torch.bool)
    offset = torch.zeros(len(boxes), 2, len(ys), len(xs))
    side = torch.zeros_like(heat)
    for n, frame_boxes in enumerate(boxes):
        frame_boxes = torch.as_tensor(frame_boxes, dtype=torch.float32)
        c = box_centres(frame_boxes)  # [P, 2]
        distance = (xs[None, None] - c[:, 0, None, None]) ** 2 + (ys[None, :, None] - c[:, 1, None, None]) ** 2
        heat[n] = torch.exp(-distance / (2 * sigma**2)).max(dim=0).values
        col = ((c[:, 0] - (STRIDE - 1) / 2) / STRIDE).round().long().clamp(0, len(xs) - 1)
        row = ((c[:, 1] - (STRIDE - 1) / 2) / STRIDE).round().long().clamp(0, len(ys) - 1)
        centre[n, row, col] = True
        heat[n, row, col] = 1.0
        offset[n, 0, row, col] = (c[:, 0] - xs[col]) / STRIDE
        offset[n, 1, row, col] = (c[:, 1] - ys[row]) / STRIDE
        side[n, row, col] = (frame_boxes[:, 3] - frame_boxes[:, 1]) / SIDE_UNIT
    return {"heat": heat, "centre": centre, "offset": offset, "side": side}


def detector_loss(out: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the heat map, L1 on offsets and heights at centres."""
    p = torch.sigmoid(out[:, 0]).clamp(1e-4, 1 - 1e-4)
    pos = target["centre"]
    positive = -((1 - p) ** 2 * torch.log(p))[pos].sum()
    negative = -((1 - target["heat"]) ** 4 * p**2 * torch.log(1 - p))[~pos].sum()
    count = max(1, int(pos.sum()))
    offset = (out[:, 1:3] - target["offset"]).abs().sum(dim=1)[pos].sum()
    side = (out[:, 3] - target["side"]).abs()[pos].sum()
    return (positive + negative + offset + side) / count


def train_detector(settings: DetectorTraining, look: EmbedderTraining, seed: int = 0,
                   progress: bool = True) -> tuple[HeadDetector, dict]:
    """A frozen detector and its record (losses; on held-out clips: recall, centre and height errors)."""
    settings.validate()
    rng = np.random.default_rng([seed, 21])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HeadDetector()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.lr, total_steps=settings.steps, pct_start=0.1)
    losses = []
    for _ in tqdm(range(settings.steps), desc="world face detector", disable=not progress):
        frames, boxes = _frames(rng, settings, look)
        loss = detector_loss(model(degrade(frames, look, rng)),
                             targets(boxes, look.frame_height, look.frame_width, settings.heat_sigma))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval().requires_grad_(False)
    return model, {"losses": losses, **detector_quality(model, settings, look, seed)}


def detector_quality(model: HeadDetector, settings: DetectorTraining, look: EmbedderTraining, seed: int) -> dict:
    """On degraded clips of held-out identities: share of faces found within 2 pixels, their mean
    centre and height errors, and false detections per frame."""
    rng = np.random.default_rng([seed, 22])
    frames, boxes = _frames(rng, settings, look, split="heldout")
    found = model.detect(degrade(frames, look, rng), settings.max_people + 1, QUALITY_THRESHOLD)
    hits, errors, heights, extra = 0, [], [], 0
    for truth, detected in zip(boxes, found):
        truth = torch.as_tensor(truth)
        if len(detected.boxes) == 0:
            continue
        distance = torch.cdist(box_centres(truth), box_centres(detected.boxes))  # [P, F]
        best, which = distance.min(dim=1)
        hit = best <= 2.0
        hits += int(hit.sum())
        errors += best[hit].tolist()
        heights += ((detected.boxes[which, 3] - detected.boxes[which, 1]) - (truth[:, 3] - truth[:, 1]))[hit].abs().tolist()
        extra += len(detected.boxes) - int(hit.sum())
    total = sum(len(b) for b in boxes)
    return {"heldout_recall_2px": hits / total, "heldout_centre_error": float(np.mean(errors)) if errors else None,
            "heldout_height_error": float(np.mean(heights)) if heights else None,
            "heldout_false_per_frame": extra / len(boxes)}


def _frames(rng: np.random.Generator, settings: DetectorTraining, look: EmbedderTraining,
            split: str = "train") -> tuple[torch.Tensor, list[np.ndarray]]:
    """Rendered frames [N, 3, H, W] in [0, 1] with 1..max_people people, and their face boxes [P, 4]."""
    frames, boxes = [], []
    for _ in range(settings.frames_per_step):
        people = sample_identities(rng, int(rng.integers(1, settings.max_people + 1)), split)
        clip = sample_clip(rng, people, num_frames=1, height=look.frame_height, width=look.frame_width)
        frames.append(clip.frames[0])
        boxes.append(clip.boxes[0])
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0, boxes
