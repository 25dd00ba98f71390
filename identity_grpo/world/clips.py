"""Clips of the synthetic world: 2-3 people side by side on a varied background, moving a little.

People keep their slot (left to right = the order of `identities`) and never overlap: each
face box stays inside its own slot, so box operations on one person never touch another.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from identity_grpo.world.identities import COUNT_WORDS, Identity, describe
from identity_grpo.world.render import FACE_HALF_WIDTH, FACE_TOP, TORSO_TOP, PersonPose, render_person, to_uint8

# Backgrounds: muted colours (HSV) with hues away from skin (orange-brown, hue ~0.05-0.1, and
# the reds and yellows next to it) and never near white, so faces and references (on white)
# always stand out: every background colour is > 30 RGB units from every skin tone.
BACKGROUND_HUE = (0.2, 0.9)
BACKGROUND_SATURATION = (0.18, 0.45)
BACKGROUND_VALUE = (0.42, 0.82)
SCALE_SPREAD = 0.86  # clips are drawn at 86-100% of the largest scale that fits
BACKGROUND_KINDS = ("plain", "vertical_gradient", "horizontal_gradient", "stripes", "checker")


@dataclass
class Clip:
    frames: np.ndarray  # [T, H, W, 3] uint8
    boxes: np.ndarray  # [T, P, 4] float32 face boxes (x0, y0, x1, y1) in pixels, hair included
    identities: list[Identity]  # P people, left to right
    prompt: str


def make_prompt(identities: list[Identity]) -> str:
    """'two people: <description>; <description>' with people listed left to right."""
    if not 1 <= len(identities) <= len(COUNT_WORDS):
        raise ValueError(f"a prompt describes 1..{len(COUNT_WORDS)} people, got {len(identities)}")
    noun = "person" if len(identities) == 1 else "people"
    return f"{COUNT_WORDS[len(identities) - 1]} {noun}: " + "; ".join(describe(p) for p in identities)


def background_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two nearby muted RGB colours (float 0..255) with hues outside the skin range: textures
    and gradients between them stay low-contrast behind the people."""
    hue, saturation, value = (rng.uniform(*r) for r in (BACKGROUND_HUE, BACKGROUND_SATURATION, BACKGROUND_VALUE))
    hue2 = np.clip(hue + rng.uniform(-0.04, 0.04), *BACKGROUND_HUE)
    saturation2 = np.clip(saturation + rng.uniform(-0.1, 0.1), *BACKGROUND_SATURATION)
    value2 = np.clip(value + rng.uniform(-0.2, 0.2), *BACKGROUND_VALUE)
    first = np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32) * 255.0
    second = np.array(colorsys.hsv_to_rgb(hue2, saturation2, value2), dtype=np.float32) * 255.0
    return first, second


def sample_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [H, W, 3]: plain, a gradient, stripes or a soft checker of two muted colours."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    first, second = background_colours(rng)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    if kind == "plain":
        weight = np.zeros((height, width, 1), dtype=np.float32)
    elif kind == "vertical_gradient":
        weight = np.broadcast_to(y, (height, width, 1))
    elif kind == "horizontal_gradient":
        weight = np.broadcast_to(x, (height, width, 1))
    elif kind == "stripes":  # horizontal, so a face box moved sideways still lines up with them
        period = rng.uniform(5.0, 10.0)
        rows = np.arange(height, dtype=np.float32)[:, None, None]
        weight = np.broadcast_to((np.sin(2 * np.pi * rows / period) > 0).astype(np.float32), (height, width, 1))
    else:
        cell = int(rng.integers(4, 9))
        rows, cols = np.arange(height)[:, None, None], np.arange(width)[None, :, None]
        weight = (((rows // cell) + (cols // cell)) % 2).astype(np.float32)
    return (first * (1.0 - weight) + second * weight).astype(np.float32)


def smooth_path(rng: np.random.Generator, num_frames: int, amplitude: float) -> np.ndarray:
    """[T] a gentle random curve in [-amplitude, amplitude]: a linear drift plus one slow wave."""
    t = np.linspace(0.0, 1.0, num_frames)
    drift = rng.uniform(-1.0, 1.0) * (t - 0.5)
    wave = 0.5 * np.sin(2 * np.pi * (rng.uniform(0.3, 1.0) * t + rng.uniform()))
    return (amplitude * (drift + wave)).astype(np.float32)


def scale_range(num_people: int, height: int, width: int) -> tuple[float, float]:
    """(lowest, highest) drawing scale of a clip with this many people and this frame size.

    The highest is the largest scale whose whole-pixel face box (half width
    ceil(FACE_HALF_WIDTH * scale)) still fits a person's slot with its centre snapped to a pixel.
    """
    max_box_half = np.floor(width / num_people / 2 - 0.5)
    highest = min(height / 48.0, max_box_half / FACE_HALF_WIDTH)
    if highest < 0.25:
        raise ValueError(f"a {height}x{width} frame is too small for {num_people} people")
    return SCALE_SPREAD * float(highest), float(highest)


def sample_poses(rng: np.random.Generator, num_people: int, num_frames: int, height: int, width: int) -> list[PersonPose]:
    """Per-person motion: slots left to right, each person drifting and bobbing inside its slot."""
    slot = width / num_people
    scale = rng.uniform(*scale_range(num_people, height, width))  # one per clip: equal-sized face boxes
    # How far a head may wander from its slot centre with its whole-pixel face box (centred on
    # the rounded head x) still inside the slot.
    box_half = np.ceil(FACE_HALF_WIDTH * scale - 1e-6)
    room_x = max(0.0, slot / 2 - box_half - 0.5)
    head_y = max((FACE_TOP + 0.8) * scale, min(0.36 * height, height - (TORSO_TOP + 6.0) * scale))
    poses = []
    for k in range(num_people):
        centre = (k + 0.5) * slot
        x = centre + rng.uniform(-0.5, 0.5) * room_x + smooth_path(rng, num_frames, 0.5 * room_x)
        x = np.clip(x, centre - room_x, centre + room_x)
        y = head_y + rng.uniform(-0.6, 0.6) * scale + smooth_path(rng, num_frames, 1.2 * scale)
        turn = np.clip(smooth_path(rng, num_frames, 1.6) + rng.uniform(-0.5, 0.5), -1.5, 1.5)
        eye_open = np.ones(num_frames, dtype=np.float32)
        if num_frames > 2 and rng.uniform() < 0.4:  # a blink
            eye_open[int(rng.integers(num_frames))] = 0.15
        mouth = np.clip(0.3 + smooth_path(rng, num_frames, 0.6), 0.0, 1.0)
        poses.append(PersonPose(x.astype(np.float32), y.astype(np.float32), np.full(num_frames, scale, np.float32),
                                turn.astype(np.float32), eye_open, mouth.astype(np.float32)))
    return poses


def sample_clip(rng: np.random.Generator, identities: list[Identity], num_frames: int = 8,
                height: int = 48, width: int = 64) -> Clip:
    """Render `identities` (left to right) in one clip with a random background and motion."""
    if not identities:
        raise ValueError("a clip needs at least one person")
    background = sample_background(rng, height, width)
    canvas = np.repeat(background[None], num_frames, axis=0)
    poses = sample_poses(rng, len(identities), num_frames, height, width)
    boxes = np.stack([render_person(canvas, person, pose) for person, pose in zip(identities, poses)], axis=1)
    return Clip(to_uint8(canvas), boxes.astype(np.float32), list(identities), make_prompt(identities))
