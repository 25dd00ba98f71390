"""An identity-consistency measure for any clip of the synthetic world, from its drawing rules.

Not a learned model, so a generator tuned against the reward model cannot have learned to
please it. Every expected person is drawn as a template (head, hair, accessory and a band of
shirt, on nothing) at the scales clips use, and looked for in every frame:

1. where: at half resolution, the colour distance of each person's templates at every position
   at once (FFT cross-correlation); the best places of all people pooled, and an optimal
   assignment gives each person a distinct place in each frame;
2. how well: at full resolution around that place, templates at half-pixel phases that count
   only pixels the person fully covers, and colour edges inside the person (hairline, eyes,
   mouth) at a fifth, so the fit hardly depends on sub-pixel position; the smallest weighted
   mean squared colour difference `err` (colours 0..1) gives the frame score exp(-err / TAU).

A face swapped onto someone else's shoulders, a duplicated face, a face morphed towards another
or the wrong person raise err far more than ordinary motion, head turns, blinks or mp4 coding.
On rendered 2-3 person clips (worst person, mean): clean ~0.9, after mp4 coding ~0.75, drift at
severity 1 ~0.35, blend ~0.08, swap and duplicate ~0.04, other people ~0.001; about 5-10 ms per
clip on one CPU core once a person's templates are cached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sp_fft
from scipy.ndimage import maximum_filter, minimum_filter1d
from scipy.optimize import linear_sum_assignment

from identity_grpo.world.clips import scale_range
from identity_grpo.world.identities import Identity
from identity_grpo.world.render import FACE_BOTTOM, FACE_HALF_WIDTH, FACE_TOP, TORSO_TOP, PersonPose, render_person

TAU = 0.01  # err of a clean clip is ~0.0005-0.002 (score ~0.8-0.95); a wrong head ~0.03+ (score < 0.05)
NUM_SCALES = 3  # template scales spread over the clips' scale range
SHIRT_UNITS = (1.5, 6.0)  # shirt rows of the template below TORSO_TOP: under the neck, above the frame edge
MAX_TURN_UNITS = 1.5  # heads move this far sideways from their shoulders (PersonPose.turn)
COARSE = 2  # the search for places runs at 1 / COARSE resolution
PHASES = ((0.0, 0.0), (0.0, 0.5), (0.5, 0.0), (0.5, 0.5))  # sub-pixel (x, y) offsets of fine templates
FINE_REACH = 1  # full-resolution pixels searched on each side of a coarse place
SOLID = 0.98  # fine templates count only pixels at least this covered by the person ...
EDGE_STEP = 0.15  # ... and count a pixel whose colour jumps by more than this to a neighbour ...
EDGE_WEIGHT = 0.2  # ... this much: its value hangs on sub-pixel placement
NMS_RADIUS_UNITS = 8.0  # two candidate places closer than this are one person


@dataclass
class IdentityScore:
    per_person: np.ndarray  # [P] float in [0, 1], in the order of the identities given
    mean: float
    worst: float
    per_frame: np.ndarray  # [T, P] float in [0, 1]


@dataclass(eq=False)  # hashed by identity: cached objects key the spectra cache
class _Template:
    colour: np.ndarray  # [h, w, 3] float, 0..1, colour where the person covers the pixel
    weight: np.ndarray  # [h, w] float, 0..1, how much each pixel counts
    centre: tuple[int, int]  # (row, col) of the head centre pixel inside the template


def _solid_weight(colour: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Fine-template weights [h, w]: 1 on fully covered pixels of flat colour, EDGE_WEIGHT where
    the colour changes to a neighbour (hairline, eyes, mouth: a quarter-pixel shift moves them),
    0 where the person only partly covers the pixel (its colour depends on the background)."""
    solid = coverage >= SOLID
    step = np.zeros(coverage.shape, dtype=np.float32)
    for axis in (0, 1):
        jump = np.abs(np.diff(colour, axis=axis)).max(axis=-1)
        both = solid[1:] & solid[:-1] if axis == 0 else solid[:, 1:] & solid[:, :-1]
        jump = np.where(both, jump, 0.0)
        front, back = [slice(None)] * 2, [slice(None)] * 2
        front[axis], back[axis] = slice(1, None), slice(None, -1)
        step[tuple(front)] = np.maximum(step[tuple(front)], jump)
        step[tuple(back)] = np.maximum(step[tuple(back)], jump)
    return np.where(solid, np.where(step > EDGE_STEP, EDGE_WEIGHT, 1.0), 0.0).astype(np.float32)


def _frame(scale: float) -> tuple[int, int, int]:
    """(rows above the head centre, columns either side, total rows) of a template canvas."""
    top = int(math.ceil((FACE_TOP + 1) * scale))
    return top, int(math.ceil((FACE_HALF_WIDTH + 1) * scale)), top + int(math.ceil((TORSO_TOP + SHIRT_UNITS[1]) * scale))


@lru_cache(maxsize=512)  # ~12 KB per template, 15 templates per person
def _templates(identity: Identity, scales: tuple[float, ...], phases: tuple[tuple[float, float], ...],
               solid: bool) -> tuple[_Template, ...]:
    """`identity` at each of `scales` (pixels per unit) x `phases` (head centre this far right of /
    below the centre pixel's centre), on one canvas size that fits the largest scale. Coverage
    comes from drawing on black and on white; all of them in one batched render."""
    top, half_w, height = _frame(scales[-1])
    combos = [(scale, phase) for scale in scales for phase in phases]
    n = len(combos)
    canvases = np.zeros((2 * n, height, 2 * half_w + 1, 3), dtype=np.float32)
    canvases[n:] = 255.0
    column = lambda values: np.asarray(values * 2, dtype=np.float32)  # noqa: E731 (black, then white)
    pose = PersonPose(column([half_w + 0.5 + p[0] for _, p in combos]), column([top + 0.5 + p[1] for _, p in combos]),
                      column([s for s, _ in combos]), np.zeros(2 * n, np.float32), np.ones(2 * n, np.float32),
                      np.full(2 * n, 0.3, np.float32))
    render_person(canvases, identity, pose)
    templates = []
    for i, (scale, phase) in enumerate(combos):
        coverage = 1.0 - (canvases[n + i] - canvases[i]).mean(axis=-1) / 255.0
        colour = canvases[i] / 255.0 / np.maximum(coverage, 1e-3)[..., None]
        weight = _solid_weight(colour, coverage) if solid else coverage
        # Between chin and shirt is the neck, which moves with the shoulders when the head
        # turns: leave it out, and trim the shirt's sides by the largest turn.
        rows = np.arange(height)[:, None] - (top + phase[1])
        weight = np.where((rows >= FACE_BOTTOM * scale) & (rows < (TORSO_TOP + SHIRT_UNITS[0]) * scale), 0.0, weight)
        trim = 2 * int(math.ceil(MAX_TURN_UNITS * scale)) + 1
        shirt = rows >= (TORSO_TOP + SHIRT_UNITS[0]) * scale
        weight = np.where(shirt, minimum_filter1d(weight, trim, axis=1), weight)
        templates.append(_Template(colour, weight.astype(np.float32), (top, half_w)))
    return tuple(templates)


def downsample(frames: np.ndarray, factor: int) -> np.ndarray:
    """[T, H, W, C] -> [T, H // factor, W // factor, C] by averaging factor x factor blocks."""
    h, w = frames.shape[1] // factor, frames.shape[2] // factor
    # A sum of strided slices: several times faster than a mean over reshaped axes.
    total = sum(frames[:, i : h * factor : factor, j : w * factor : factor] for i in range(factor) for j in range(factor))
    return total / float(factor * factor)


@lru_cache(maxsize=64)  # up to ~150 KB each
def _kernel_spectra(templates: tuple[_Template, ...], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Conjugate spectra [K, 4, ...] of (w, -2 w t_r, -2 w t_g, -2 w t_b) and constants sum w |t|^2."""
    kernels = np.zeros((len(templates), 4) + shape, dtype=np.float32)
    constants = np.zeros(len(templates), dtype=np.float32)
    for k, t in enumerate(templates):
        h, w = t.weight.shape
        kernels[k, 0, :h, :w] = t.weight
        kernels[k, 1:, :h, :w] = -2.0 * (t.weight[..., None] * t.colour).transpose(2, 0, 1)
        constants[k] = float((t.weight * (t.colour**2).sum(-1)).sum())
    return np.conj(sp_fft.rfft2(kernels)), constants


def _error_maps(frames: np.ndarray, templates: tuple[_Template, ...]) -> np.ndarray:
    """frames float [T, H, W, 3] (0..1) -> [T, K, H, W] summed weighted squared error of template
    k with its head centre on each pixel (outside the frame: edge pixels repeated)."""
    T, H, W, _ = frames.shape
    above = max(t.centre[0] for t in templates)
    below = max(t.weight.shape[0] - t.centre[0] for t in templates)
    side = max(max(t.centre[1], t.weight.shape[1] - t.centre[1]) for t in templates)
    padded = np.pad(frames, ((0, 0), (above, below), (side, side), (0, 0)), mode="edge")
    shape = (sp_fft.next_fast_len(padded.shape[1], real=True), sp_fft.next_fast_len(padded.shape[2], real=True))
    # sum w (I - t)^2 = corr(|I|^2, w) - 2 sum_c corr(I_c, w t_c) + sum w |t|^2, all by FFT.
    signal = np.concatenate([(padded**2).sum(-1, keepdims=True), padded], axis=-1).transpose(0, 3, 1, 2)
    spectrum = sp_fft.rfft2(signal.astype(np.float32), s=shape)
    kernels, constants = _kernel_spectra(templates, shape)
    product = spectrum[:, None, 0] * kernels[None, :, 0]
    for c in range(1, 4):
        product += spectrum[:, None, c] * kernels[None, :, c]
    correlation = sp_fft.irfft2(product, s=shape)  # [T, K, ...] indexed by the template's top-left corner
    maps = np.empty((T, len(templates), H, W), dtype=np.float32)
    for k, t in enumerate(templates):
        r, c = above - t.centre[0], side - t.centre[1]
        maps[:, k] = correlation[:, k, r : r + H, c : c + W] + constants[k]
    return np.maximum(maps, 0.0)


def _similarity_maps(frames: np.ndarray, identities: list[Identity], scales: np.ndarray) -> np.ndarray:
    """[T, P, h, w]: how well each person, head centred on each pixel, fits each coarse frame."""
    T, H, W, _ = frames.shape
    coarse = tuple(round(float(s) / COARSE, 4) for s in scales)
    templates = tuple(t for p in identities for t in _templates(p, coarse, ((0.0, 0.0),), False))
    weights = np.array([t.weight.sum() for t in templates], dtype=np.float32).reshape(1, -1, 1, 1)
    mean_error = (_error_maps(frames, templates) / weights / 3.0).reshape(T, len(identities), len(scales), H, W)
    return np.exp(-mean_error.min(axis=2) / TAU)


def _candidates(similarity: np.ndarray, count: int, radius: int) -> list[tuple[int, int]]:
    """Up to `count` peaks of one [H, W] map, greedily, none within `radius` of a better one."""
    work = similarity.copy()
    peaks = []
    for _ in range(count):
        r, c = np.unravel_index(int(np.argmax(work)), work.shape)
        peaks.append((int(r), int(c)))
        work[max(0, r - radius) : r + radius + 1, max(0, c - radius) : c + radius + 1] = -1.0
    return peaks


def _assign_places(similarity: np.ndarray, radius: int) -> np.ndarray:
    """similarity [T, P, h, w] -> places [T, P, 2] (row, col): a distinct place per person per frame."""
    T, P = similarity.shape[:2]
    # A person's value at a place: its best fit within a pixel (peaks of different people differ by rounding).
    near = maximum_filter(similarity, size=(1, 1, 3, 3), mode="nearest")
    places = np.zeros((T, P, 2), dtype=int)
    for t in range(T):
        pool = sorted({peak for p in range(P) for peak in _candidates(similarity[t, p], P, radius)})
        values = np.array([[near[t, p, r, c] for r, c in pool] for p in range(P)])
        rows, cols = linear_sum_assignment(-values)
        places[t, rows] = np.array(pool)[cols]
    return places


@dataclass
class _FineStack:
    """A person's fine templates (scales x phases) flattened for one matrix product per person."""

    weight: np.ndarray  # [K, N] float32, each used pixel's weight repeated for its three channels
    weighted_colour: np.ndarray  # [K, N] float32
    constant: np.ndarray  # [K] sum of w |t|^2
    norm: np.ndarray  # [K] 3 * sum of w: turns a summed error into a mean over channels and pixels
    used: np.ndarray  # [N] indices into a flattened [h, w, 3] window of the values any template weighs
    centre: tuple[int, int]
    shape: tuple[int, int]  # (h, w)


@lru_cache(maxsize=256)  # ~80 KB each
def _fine_stack(person: Identity, scales: tuple[float, ...]) -> _FineStack:
    stack = _templates(person, scales, PHASES, True)
    weight = np.stack([np.repeat(t.weight.reshape(-1), 3) for t in stack])
    colour = np.stack([t.colour.reshape(-1) for t in stack])
    used = np.flatnonzero(weight.any(axis=0))  # about half the canvas is background or neck
    weight, colour = weight[:, used], colour[:, used]
    return _FineStack(weight, weight * colour, (weight * colour**2).sum(axis=1), weight.sum(axis=1),
                      used, stack[0].centre, stack[0].weight.shape)


def _fine_errors(padded: np.ndarray, margin: int, person: Identity, scales: tuple[float, ...],
                 centres: np.ndarray) -> np.ndarray:
    """Smallest mean squared colour error [T] of `person` near full-resolution centres [T, 2] in
    frames padded by `margin` pixels [T, H + 2m, W + 2m, 3]."""
    stack = _fine_stack(person, scales)
    (top, left), (h, w) = stack.centre, stack.shape
    span = 2 * FINE_REACH + 2  # candidate rows/cols per frame: the coarse cell's two pixels + reach
    windows = []
    for t, (row, col) in enumerate(centres):
        r0, c0 = margin + row - FINE_REACH - top, margin + col - FINE_REACH - left
        view = sliding_window_view(padded[t, r0 : r0 + span + h - 1, c0 : c0 + span + w - 1], (h, w, 3))
        windows.append(view.reshape(span * span, h * w * 3)[:, stack.used])
    patches = np.concatenate(windows)  # [T * span^2, N]
    # sum w (I - t)^2 = sum w I^2 - 2 sum w t I + sum w t^2, as two matrix products
    error = (patches * patches) @ stack.weight.T - 2.0 * (patches @ stack.weighted_colour.T) + stack.constant
    error = np.maximum(error, 0.0) / stack.norm
    return error.reshape(len(centres), -1).min(axis=1)


def identity_consistency(frames: np.ndarray, identities: list[Identity]) -> IdentityScore:
    """How well clip frames uint8 [T, H, W, 3] show each of `identities` (any order, one place each)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if not identities:
        raise ValueError("identities must name at least one person")
    T, H, W, _ = frames.shape
    P = len(identities)
    scales = np.linspace(*scale_range(P, H, W), NUM_SCALES)
    image = frames.astype(np.float32) / 255.0
    similarity = _similarity_maps(downsample(image, COARSE), identities, scales)
    places = _assign_places(similarity, max(1, int(NMS_RADIUS_UNITS * scales[-1] / COARSE)))
    fine_scales = tuple(round(float(s), 4) for s in scales)
    _, half_w, height = _frame(fine_scales[-1])
    margin = max(height, 2 * half_w + 1) + FINE_REACH + 1
    padded = np.pad(image, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode="edge")
    per_frame = np.stack([np.exp(-_fine_errors(padded, margin, person, fine_scales, places[:, p] * COARSE) / TAU)
                          for p, person in enumerate(identities)], axis=1)
    per_person = per_frame.mean(axis=0)
    return IdentityScore(per_person, float(per_person.mean()), float(per_person.min()), per_frame)
