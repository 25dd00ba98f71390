"""Identity distortions of multi-person clips, driven only by per-person face boxes.

Each operator takes frames uint8 [T, H, W, 3], face boxes [T, P, 4] (x0, y0, x1, y1 in pixels),
a severity in [0, 1] and a numpy Generator, and returns new frames. They need no knowledge of
how the clip was made, so the same code corrupts synthetic clips and real footage: pixels only
move between the boxes of one clip (a box's content resampled into another box) or degrade
inside boxes. Guarantees: severity 0 returns an exact copy; pixels outside the boxes an operator
touches (rounded outwards to whole pixels, see `box_region`) never change.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

BLEND_MAX_WEIGHT = 0.75  # blend at severity 1: mostly the other face, still not a plain copy
DEGRADE_MODES = ("blur", "noise", "pixelate")


def box_region(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Float box (x0, y0, x1, y1) -> whole-pixel rows/cols (r0, r1, c0, c1) it touches, clipped."""
    c0, c1 = (min(width, max(0, v)) for v in (math.floor(box[0]), math.ceil(box[2])))
    r0, r1 = (min(height, max(0, v)) for v in (math.floor(box[1]), math.ceil(box[3])))
    return r0, max(r0, r1), c0, max(c0, c1)


def resample_box(frame: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The content of box `source` of frame float [H, W, 3], stretched bilinearly onto the pixels
    of `target`'s region: float [h, w, 3]. Equal-sized, pixel-aligned boxes copy pixels exactly."""
    H, W, _ = frame.shape
    r0, r1, c0, c1 = box_region(target, H, W)
    scale_x = (source[2] - source[0]) / max(target[2] - target[0], 1e-6)
    scale_y = (source[3] - source[1]) / max(target[3] - target[1], 1e-6)
    # Continuous source index of each target pixel centre (pixel k spans [k, k + 1)).
    sx = source[0] + (np.arange(c0, c1) + 0.5 - target[0]) * scale_x - 0.5
    sy = source[1] + (np.arange(r0, r1) + 0.5 - target[1]) * scale_y - 0.5
    # Sample only inside the source box (and the frame): a neighbour's pixels must not bleed in.
    # (A source box wholly off the frame leaves its nearest edge pixels.)
    sr0, sr1, sc0, sc1 = box_region(source, H, W)
    sx = np.clip(sx, min(sc0, W - 1), min(max(sc0, sc1 - 1), W - 1))
    sy = np.clip(sy, min(sr0, H - 1), min(max(sr0, sr1 - 1), H - 1))
    x_lo, y_lo = np.floor(sx).astype(int), np.floor(sy).astype(int)
    x_hi, y_hi = np.minimum(x_lo + 1, W - 1), np.minimum(y_lo + 1, H - 1)
    fx, fy = (sx - x_lo)[None, :, None], (sy - y_lo)[:, None, None]
    top = frame[y_lo][:, x_lo] * (1 - fx) + frame[y_lo][:, x_hi] * fx
    bottom = frame[y_hi][:, x_lo] * (1 - fx) + frame[y_hi][:, x_hi] * fx
    return top * (1 - fy) + bottom * fy


def _check(frames: np.ndarray, boxes: np.ndarray, severity: float, min_people: int) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if boxes.ndim != 3 or boxes.shape[0] != frames.shape[0] or boxes.shape[2] != 4:
        raise ValueError(f"boxes must be [T={frames.shape[0]}, P, 4], got {boxes.shape}")
    if boxes.shape[1] < min_people:
        raise ValueError(f"this distortion needs at least {min_people} people, got {boxes.shape[1]}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")


def _pick_two(rng: np.random.Generator, num_people: int) -> tuple[int, int]:
    """(victim, donor): the person whose box changes and the person whose face it receives."""
    victim, donor = rng.choice(num_people, size=2, replace=False)
    return int(victim), int(donor)


def _affected_frames(severity: float, num_frames: int) -> int:
    """How many final frames a late-onset error covers: at least one, all at severity 1."""
    return min(num_frames, max(1, math.ceil(severity * num_frames - 1e-9)))


def _mix_into(out: np.ndarray, source: np.ndarray, t: int, victim_box, donor_box, weight: float) -> None:
    """out[t]'s victim region <- (1 - weight) * itself + weight * donor's face from `source[t]`."""
    H, W = out.shape[1:3]
    r0, r1, c0, c1 = box_region(victim_box, H, W)
    donor = resample_box(source[t], donor_box, victim_box)
    out[t, r0:r1, c0:c1] += weight * (donor - out[t, r0:r1, c0:c1])


def _finish(out: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def swap(frames: np.ndarray, boxes: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Two people exchange faces for the last ceil(severity * T) frames (from frame 0 at severity 1)."""
    _check(frames, boxes, severity, 2)
    if severity == 0:
        return frames.copy()
    first, second = _pick_two(rng, boxes.shape[1])
    source, out = frames.astype(np.float32), frames.astype(np.float32)
    T = len(frames)
    for t in range(T - _affected_frames(severity, T), T):
        _mix_into(out, source, t, boxes[t, first], boxes[t, second], 1.0)
        _mix_into(out, source, t, boxes[t, second], boxes[t, first], 1.0)
    return _finish(out)


def drift(frames: np.ndarray, boxes: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A face morphs steadily into another person's: weight severity * t / (T - 1) at frame t."""
    _check(frames, boxes, severity, 2)
    if severity == 0:
        return frames.copy()
    victim, donor = _pick_two(rng, boxes.shape[1])
    source, out = frames.astype(np.float32), frames.astype(np.float32)
    T = len(frames)
    for t in range(T):
        weight = severity * (t / (T - 1) if T > 1 else 1.0)
        if weight > 0:
            _mix_into(out, source, t, boxes[t, victim], boxes[t, donor], weight)
    return _finish(out)


def blend(frames: np.ndarray, boxes: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A face is a fixed morph of itself and another person's in every frame (weight 0.75 * severity)."""
    _check(frames, boxes, severity, 2)
    if severity == 0:
        return frames.copy()
    victim, donor = _pick_two(rng, boxes.shape[1])
    source, out = frames.astype(np.float32), frames.astype(np.float32)
    for t in range(len(frames)):
        _mix_into(out, source, t, boxes[t, victim], boxes[t, donor], BLEND_MAX_WEIGHT * severity)
    return _finish(out)


def duplicate(frames: np.ndarray, boxes: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """One person turns into a copy of another for the last ceil(severity * T) frames."""
    _check(frames, boxes, severity, 2)
    if severity == 0:
        return frames.copy()
    victim, donor = _pick_two(rng, boxes.shape[1])
    source, out = frames.astype(np.float32), frames.astype(np.float32)
    T = len(frames)
    for t in range(T - _affected_frames(severity, T), T):
        _mix_into(out, source, t, boxes[t, victim], boxes[t, donor], 1.0)
    return _finish(out)


def flicker(frames: np.ndarray, boxes: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """A few scattered frames (ceil(severity * T / 2)) show another person's face in one box.

    The frames are a prefix of one random permutation, so with the same generator a higher
    severity flickers a superset of the frames of a lower one.
    """
    _check(frames, boxes, severity, 2)
    if severity == 0:
        return frames.copy()
    victim, donor = _pick_two(rng, boxes.shape[1])
    T = len(frames)
    count = min(T, max(1, math.ceil(severity * T / 2 - 1e-9)))
    source, out = frames.astype(np.float32), frames.astype(np.float32)
    for t in rng.permutation(T)[:count]:
        _mix_into(out, source, int(t), boxes[t, victim], boxes[t, donor], 1.0)
    return _finish(out)


def degrade(frames: np.ndarray, boxes: np.ndarray, severity: float, rng: np.random.Generator,
            mode: str | None = None) -> np.ndarray:
    """Blur, noise or pixelation inside every face box (mode drawn from rng unless given).

    Strength at severity s: Gaussian blur sigma 0.4 + 1.6 s px; noise std 6 + 44 s grey levels;
    pixel blocks of 2 + floor(3.99 s) px.
    """
    _check(frames, boxes, severity, 1)
    if severity == 0:
        return frames.copy()
    mode = mode or DEGRADE_MODES[int(rng.integers(len(DEGRADE_MODES)))]
    if mode not in DEGRADE_MODES:
        raise ValueError(f"degrade mode must be one of {DEGRADE_MODES}, got {mode!r}")
    T, H, W, _ = frames.shape
    out = frames.astype(np.float32)
    if mode == "blur":
        blurred = gaussian_filter(out, sigma=(0, 0.4 + 1.6 * severity, 0.4 + 1.6 * severity, 0))
    elif mode == "noise":
        blurred = out + rng.normal(0.0, 6.0 + 44.0 * severity, size=out.shape).astype(np.float32)
    else:
        blurred = None
        block = 2 + int(math.floor(3.99 * severity))
    for t in range(T):
        for box in boxes[t]:
            r0, r1, c0, c1 = box_region(box, H, W)
            if mode == "pixelate":
                out[t, r0:r1, c0:c1] = pixelate(out[t, r0:r1, c0:c1], block)
            else:
                out[t, r0:r1, c0:c1] = blurred[t, r0:r1, c0:c1]
    return _finish(out)


def pixelate(region: np.ndarray, block: int) -> np.ndarray:
    """float [h, w, 3] -> each block x block cell (from the top-left corner) set to its mean;
    cells cut by the region's edge average over edge-repeated pixels."""
    h, w, _ = region.shape
    if h == 0 or w == 0:
        return region
    hb, wb = -(-h // block), -(-w // block)
    padded = np.pad(region, ((0, hb * block - h), (0, wb * block - w), (0, 0)), mode="edge")
    means = padded.reshape(hb, block, wb, block, 3).mean(axis=(1, 3))
    return np.repeat(np.repeat(means, block, axis=0), block, axis=1)[:h, :w]


Distortion = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]
DISTORTIONS: dict[str, Distortion] = {
    "swap": swap,
    "drift": drift,
    "blend": blend,
    "duplicate": duplicate,
    "flicker": flicker,
    "degrade": degrade,
}


def apply_distortion(kind: str, frames: np.ndarray, boxes: np.ndarray, severity: float,
                     rng: np.random.Generator) -> np.ndarray:
    if kind not in DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}; choose from {sorted(DISTORTIONS)}")
    return DISTORTIONS[kind](np.asarray(frames), np.asarray(boxes, dtype=np.float64), float(severity), rng)
