"""Drawing people of the synthetic world with numpy: anti-aliased ellipses, rectangles, triangles.

Geometry is written in *units* (one unit = `scale` pixels) around the head centre; at scale 1
a head is 12-15 px wide, 18-20 px with its hair. All frames of a clip are drawn at once: per-frame
parameters are [T] arrays broadcast over a [T, h, w] window around the person, which keeps a
whole 8-frame clip at a few milliseconds.

The face box (x0, y0, x1, y1 in pixels, integer-valued) holds head, hair and accessory but no
shirt, so moving a box's content moves the identity and leaves the body behind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from identity_grpo.world.identities import EYE_COLOURS, PALETTE, SKIN_TONES, Identity

HEAD_AXES = {"round": (6.8, 7.5), "long": (6.0, 8.2), "wide": (7.3, 6.8)}  # (half width, half height)
# Face box extents in units. Each is the farthest drawn edge plus one unit, which covers the
# half-pixel soft edge and the half-pixel snap of the box to the grid down to scale ~0.85.
FACE_HALF_WIDTH = 10.2  # widest: wide head (7.3) + curls (1.7)
FACE_TOP = 13.0  # tallest: long head (8.2) + spikes (3.6)
FACE_BOTTOM = 9.2  # longest chin (8.2)
TORSO_TOP = 11.0  # the shirt starts below the face box, so box moves leave bodies in place
TORSO_HALF_WIDTH = 9.5
NECK_COLOUR_FACTOR = 0.85  # a slightly darker neck separates chin from neck
HAT_COLOUR = (112, 112, 124)
GLASSES_COLOUR = (18, 18, 22)
MOUTH_COLOUR = (132, 28, 40)
EYE_WHITE = (250, 250, 250)
# Units the eyes and mouth follow a head turn by, per unit of head offset (a 3/4-view hint).
FEATURE_TURN = 0.35


_rgb = lambda c: np.asarray(c, dtype=np.float32)  # noqa: E731
_COLOURS = {name: _rgb(c) for name, c in PALETTE.items()}  # hair and shirt colours
_SKINS = {name: _rgb(c) for name, c in SKIN_TONES.items()}
_EYES = {name: _rgb(c) for name, c in EYE_COLOURS.items()}
_EYE_WHITE, _MOUTH, _GLASSES, _HAT = _rgb(EYE_WHITE), _rgb(MOUTH_COLOUR), _rgb(GLASSES_COLOUR), _rgb(HAT_COLOUR)


@dataclass
class PersonPose:
    """Where and how one person is drawn in each of T frames."""

    x: np.ndarray  # [T] float, head centre x in pixels
    y: np.ndarray  # [T] float, head centre y in pixels
    scale: np.ndarray  # [T] float, pixels per unit
    turn: np.ndarray  # [T] float, head offset from the body in units (small pose change)
    eye_open: np.ndarray  # [T] float in [0, 1]; 0 = closed
    mouth_open: np.ndarray  # [T] float in [0, 1]

    @staticmethod
    def still(x: float, y: float, scale: float, num_frames: int = 1) -> "PersonPose":
        full = lambda v: np.full(num_frames, v, dtype=np.float32)  # noqa: E731
        return PersonPose(full(x), full(y), full(scale), full(0.0), full(1.0), full(0.3))


def face_box(x: np.ndarray, y: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Head centres [T] -> face boxes [T, 4] (x0, y0, x1, y1) on the pixel grid.

    Snapped to whole pixels with a size that depends on the scale only, so two people drawn at
    one scale have boxes of identical size and box-to-box moves copy pixels without resampling.
    """
    x, y, scale = (np.asarray(v, dtype=np.float64) for v in (x, y, scale))
    half_w = np.ceil(FACE_HALF_WIDTH * scale - 1e-6)
    top, bottom = np.ceil(FACE_TOP * scale - 1e-6), np.ceil(FACE_BOTTOM * scale - 1e-6)
    cx, cy = np.floor(x + 0.5), np.floor(y + 0.5)
    return np.stack([cx - half_w, cy - top, cx + half_w, cy + bottom], axis=-1).astype(np.float32)


def _ramp(distance_inside: np.ndarray) -> np.ndarray:
    """Signed distance in pixels (positive inside) -> coverage with a one-pixel soft edge."""
    coverage = distance_inside + 0.5
    np.maximum(coverage, 0.0, out=coverage)  # in place: np.clip's wrapper costs more than the math here
    return np.minimum(coverage, 1.0, out=coverage)


def ellipse(X, Y, cx, cy, rx, ry) -> np.ndarray:
    dx, dy = (X - cx) / rx, (Y - cy) / ry
    radius = np.sqrt(dx * dx + dy * dy)
    return _ramp((1.0 - radius) * np.minimum(rx, ry))


def rect(X, Y, x0, y0, x1, y1) -> np.ndarray:
    return _ramp(np.minimum(X - x0, x1 - X)) * _ramp(np.minimum(Y - y0, y1 - Y))


def triangle(X, Y, p0, p1, p2) -> np.ndarray:
    """Counter-clockwise-agnostic triangle coverage from the distance to its three edges."""
    corners = [p0, p1, p2]
    # Orientation sign makes "inside" positive whichever way the corners wind.
    sign = np.sign((p1[0] - p0[0]) * (p2[1] - p0[1]) - (p1[1] - p0[1]) * (p2[0] - p0[0]))
    inside = None
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
        ex, ey = bx - ax, by - ay
        distance = sign * (ex * (Y - ay) - ey * (X - ax)) / np.sqrt(ex**2 + ey**2)
        inside = distance if inside is None else np.minimum(inside, distance)
    return _ramp(inside)


class _Painter:
    """Composites shapes into canvas float32 [T, H, W, 3], each evaluated only inside its own
    bounding box (over all frames): small features then cost microseconds, not a full window."""

    def __init__(self, canvas: np.ndarray):
        self.canvas = canvas
        _, self.height, self.width, _ = canvas.shape
        # Pixel-centre coordinates, sliced per shape.
        self.xs = (np.arange(self.width, dtype=np.float32) + 0.5)[None, None, :]
        self.ys = (np.arange(self.height, dtype=np.float32) + 0.5)[None, :, None]

    def paint(self, colour, bounds, coverage: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        """bounds: (x0, y0, x1, y1) pixels covering the shape in every frame; coverage(X, Y) -> [T, h, w]."""
        c0, r0 = max(0, math.floor(bounds[0])), max(0, math.floor(bounds[1]))
        c1, r1 = min(self.width, math.ceil(bounds[2])), min(self.height, math.ceil(bounds[3]))
        if c0 >= c1 or r0 >= r1:
            return
        alpha = coverage(self.xs[..., c0:c1], self.ys[:, r0:r1])[..., None]
        window = self.canvas[:, r0:r1, c0:c1]
        window += alpha * (colour - window)

    def ellipse(self, colour, cx, cy, rx, ry) -> None:
        self.paint(colour, _extent(cx - rx, cy - ry, cx + rx, cy + ry), lambda X, Y: ellipse(X, Y, cx, cy, rx, ry))

    def rect(self, colour, x0, y0, x1, y1) -> None:
        self.paint(colour, _extent(x0, y0, x1, y1), lambda X, Y: rect(X, Y, x0, y0, x1, y1))


def _extent(x0, y0, x1, y1) -> tuple[float, float, float, float]:
    """Pixel bounds of a shape whose per-frame corners are arrays, with a pixel for the soft edge."""
    low = lambda v: float(v.min()) if isinstance(v, np.ndarray) else float(v)  # noqa: E731 (ndarray.min: no wrapper)
    high = lambda v: float(v.max()) if isinstance(v, np.ndarray) else float(v)  # noqa: E731
    return low(x0) - 1, low(y0) - 1, high(x1) + 1, high(y1) + 1


def render_person(canvas: np.ndarray, identity: Identity, pose: PersonPose) -> np.ndarray:
    """Draw `identity` into canvas float32 [T, H, W, 3] (0..255, in place); returns face boxes [T, 4]."""
    T, H, _, _ = canvas.shape
    paint = _Painter(canvas)
    col = lambda v: np.asarray(v, dtype=np.float32).reshape(T, 1, 1)  # noqa: E731
    s, hx, hy = col(pose.scale), col(pose.x), col(pose.y)
    bx = hx - col(pose.turn) * s  # the body stays where the head turned from
    a, b = (v * s for v in HEAD_AXES[identity.head_shape])
    hair, shirt = _COLOURS[identity.hair_colour], _COLOURS[identity.shirt_colour]
    skin, eyes = _SKINS[identity.skin], _EYES[identity.eye_colour]
    style = identity.hair_style

    if style == "long":  # hair falling behind the head down to the chin
        ra, rb = a + 1.6 * s, b + 1.3 * s
        paint.paint(hair, _extent(hx - ra, hy - rb, hx + ra, hy + rb), lambda X, Y: np.maximum(
            ellipse(X, Y, hx, hy, ra, rb), rect(X, Y, hx - ra, hy, hx + ra, hy + 0.85 * b)))
    # Shoulders: a flat ellipse on top of a block that runs off the bottom of the frame.
    shoulder_y, half_w = hy + (TORSO_TOP + 3.5) * s, TORSO_HALF_WIDTH * s
    paint.paint(shirt, _extent(bx - half_w, shoulder_y - 3.5 * s, bx + half_w, H),
                lambda X, Y: np.maximum(ellipse(X, Y, bx, shoulder_y, half_w, 3.5 * s),
                                        rect(X, Y, bx - half_w, shoulder_y, bx + half_w, H + 1.0)))
    paint.rect(skin * NECK_COLOUR_FACTOR, bx - 2.2 * s, hy + 0.5 * b, bx + 2.2 * s, hy + (TORSO_TOP + 1.0) * s)
    # Hair cap first, then the face below the hairline over it: the cap shows as the crown and
    # as a rim along the temples.
    ca, cb, cy = a + 1.0 * s, b + 1.1 * s, hy - 0.6 * s
    paint.paint(hair, _extent(hx - ca, cy - cb, hx + ca, hy + 0.1 * b),
                lambda X, Y: ellipse(X, Y, hx, cy, ca, cb) * (Y < hy + 0.1 * b))
    paint.paint(skin, _extent(hx - a, hy - 0.3 * b, hx + a, hy + b),
                lambda X, Y: ellipse(X, Y, hx, hy, a, b) * _ramp(Y - (hy - 0.3 * b)))
    if style == "spiky":
        for angle in np.radians([-64.0, -32.0, 0.0, 32.0, 64.0]):
            corners = [(hx + (a + 3.6 * s) * math.sin(angle), hy - (b + 3.6 * s) * math.cos(angle))] + [
                (hx + (a - 0.5 * s) * math.sin(angle + d), hy - (b - 0.5 * s) * math.cos(angle + d)) for d in (-0.3, 0.3)
            ]
            xs, ys = [c[0] for c in corners], [c[1] for c in corners]
            paint.paint(hair, _extent(np.minimum.reduce(xs), np.minimum.reduce(ys), np.maximum.reduce(xs),
                                      np.maximum.reduce(ys)), lambda X, Y, c=corners: triangle(X, Y, *c))
    elif style == "curly":
        for angle in np.radians([-110.0, -75.0, -40.0, 0.0, 40.0, 75.0, 110.0]):
            cx, cy = hx + (a - 0.1 * s) * math.sin(angle), hy - 0.4 * s - (b + 0.2 * s) * math.cos(angle)
            paint.ellipse(hair, cx, cy, 1.8 * s, 1.8 * s)

    fx = hx + col(pose.turn) * FEATURE_TURN * s
    eye_y = hy - 0.05 * b
    openness = np.clip(col(pose.eye_open), 0.12, 1.0)
    for side in (-1.0, 1.0):
        ex = fx + side * 0.42 * a
        paint.ellipse(_EYE_WHITE, ex, eye_y, 1.8 * s, 1.4 * s * openness)
        paint.ellipse(eyes, ex, eye_y, 1.05 * s, np.minimum(1.05, 1.4 * openness) * s)
    mouth_h = (0.45 + 0.9 * np.clip(col(pose.mouth_open), 0.0, 1.0)) * s
    paint.ellipse(_MOUTH, fx, hy + 0.5 * b, 2.2 * s, mouth_h)

    if identity.accessory == "glasses":
        for side in (-1.0, 1.0):
            ex = fx + side * 0.42 * a
            paint.paint(_GLASSES, _extent(ex - 2.6 * s, eye_y - 2.3 * s, ex + 2.6 * s, eye_y + 2.3 * s),
                        lambda X, Y, ex=ex: np.clip(ellipse(X, Y, ex, eye_y, 2.6 * s, 2.3 * s)
                                                    - ellipse(X, Y, ex, eye_y, 1.9 * s, 1.6 * s), 0.0, 1.0))
        paint.rect(_GLASSES, fx - 0.42 * a + 2.4 * s, eye_y - 0.4 * s, fx + 0.42 * a - 2.4 * s, eye_y + 0.4 * s)
    elif identity.accessory == "hat":  # perched on the crown, so the hair still shows below it
        brim_y = hy - b + 0.8 * s
        paint.rect(_HAT, hx - a + 0.2 * s, brim_y - 1.2 * s, hx + a - 0.2 * s, brim_y)
        paint.rect(_HAT, hx - a + 1.8 * s, brim_y - 3.8 * s, hx + a - 1.8 * s, brim_y)
    return face_box(pose.x, pose.y, pose.scale)


def render_reference(identity: Identity, size: int = 32) -> np.ndarray:
    """Head and shoulders of `identity`, centred on a white square canvas: uint8 [size, size, 3]."""
    scale = size / 30.0
    canvas = np.full((1, size, size, 3), 255.0, dtype=np.float32)
    head_y = 12.8 * scale  # hair tips one unit below the top; the shirt fills the last ~6 units
    render_person(canvas, identity, PersonPose.still(size / 2.0, head_y, scale))
    return to_uint8(canvas[0])


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
