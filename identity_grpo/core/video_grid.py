"""Side-by-side sample grids: one row per prompt, columns = the prompt's reference images | the base
model's clip | each LoRA's clip (same prompt, same initial noise), a label over every column and
each clip's scores under it. Small clips (the synthetic world's 48x64) are enlarged by an integer
factor with nearest-neighbour sampling so every pixel stays a sharp block; large ones are shrunk.
Written as mp4, GIF and a PNG of the middle frame. The report draws these grids with scores; the
trainers' evaluations draw them with `sample_grid` (references | clips per evaluation)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from identity_grpo.core.video import resize_frames, write_image, write_video

BACKGROUND = (232, 232, 232)  # light grey: the references' white canvases stand out from it
TEXT = (20, 20, 20)
BORDER = (120, 120, 120)
MARGIN = 8  # pixels around the grid and between columns / rows
FONT_SIZE = 15
TARGET_CELL_HEIGHT = 192  # clips are scaled to about this height
MAX_GIF_FRAMES = 32  # longer clips (Wan's 81 frames) are thinned for the GIF; the mp4 keeps every frame


@dataclass
class GridRow:
    references: list[np.ndarray]  # P images uint8 [h, w, 3]
    clips: list[np.ndarray]  # one clip per model, uint8 [T, H, W, 3]
    captions: list[str]  # one line under each clip (its scores)
    label: str  # left of the row ("#1"): report.md lists the prompts by these labels


@dataclass
class GridLayout:
    height: int  # pixels of the whole grid
    width: int
    cell_height: int  # a clip's size in the grid
    cell_width: int
    clip_origins: list[list[tuple[int, int]]]  # [row][model] (y, x) of the clip's top-left pixel
    reference_origins: list[list[tuple[int, int]]]  # [row][person] (y, x) of each reference's top-left pixel
    reference_height: int  # references are scaled to this height, aspect kept


def clip_scale(height: int, target: int = TARGET_CELL_HEIGHT) -> float:
    """An integer enlargement for small clips (nearest neighbour stays exact), a shrink for large ones."""
    return float(max(1, round(target / height))) if height < target else target / height


def enlarge(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [..., H, W, 3] -> [..., height, width, 3]: pixel repetition for integer enlargements,
    nearest neighbour for other enlargements (generated pixels stay visible as blocks), antialiased
    resampling when shrinking."""
    h, w = frames.shape[-3:-1]
    if height % h == 0 and width % w == 0 and height // h == width // w:
        k = height // h
        return frames.repeat(k, axis=-3).repeat(k, axis=-2)
    batch = frames.reshape(-1, h, w, 3)
    if height >= h:
        batch = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.NEAREST)) for f in batch])
    else:
        batch = resize_frames(batch, height, width)
    return batch.reshape(*frames.shape[:-3], height, width, 3)


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, face) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=face) <= width:
        return text
    while text and draw.textlength(text + "…", font=face) > width:
        text = text[:-1]
    return text + "…"


def layout_grid(rows: Sequence[GridRow], scale: float | None = None) -> GridLayout:
    if not rows or not rows[0].clips:
        raise ValueError("grid: needs at least one row with one clip")
    _, h, w, _ = rows[0].clips[0].shape
    scale = clip_scale(h) if scale is None else scale
    cell_h, cell_w = round(h * scale), round(w * scale)
    ref_h = cell_h // 2  # smaller than the clips: they are a key to the clips, not the subject
    line = FONT_SIZE + 6
    label_w = 4 * FONT_SIZE  # row labels ("#12")
    ref_widths = [[round(r.shape[1] * ref_h / r.shape[0]) for r in row.references] for row in rows]
    ref_column = max(sum(ws) + MARGIN * (len(ws) - 1) for ws in ref_widths)
    ref_column = max(ref_column, 7 * FONT_SIZE)  # room for the column's label
    models = len(rows[0].clips)
    row_h = cell_h + line  # clip + caption
    top = MARGIN + line  # header
    clip_origins, ref_origins = [], []
    for i, widths in enumerate(ref_widths):
        y = top + i * (row_h + MARGIN)
        x0 = MARGIN + label_w
        xs = np.cumsum([0] + [wd + MARGIN for wd in widths[:-1]]) + x0
        ref_origins.append([(y + (cell_h - ref_h) // 2, int(x)) for x in xs])
        first_clip = x0 + ref_column + MARGIN
        clip_origins.append([(y, first_clip + m * (cell_w + MARGIN)) for m in range(models)])
    width = MARGIN + label_w + ref_column + models * (cell_w + MARGIN) + MARGIN
    height = top + len(rows) * (row_h + MARGIN)
    return GridLayout(height, width, cell_h, cell_w, clip_origins, ref_origins, ref_h)


def _background(rows: Sequence[GridRow], columns: Sequence[str], layout: GridLayout) -> np.ndarray:
    """The static part: labels, references, captions, clip borders."""
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    face, small = font(), font(FONT_SIZE - 3)
    first = layout.reference_origins[0][0][1]
    header_y = MARGIN // 2
    ref_room = layout.clip_origins[0][0][1] - first - MARGIN
    draw.text((first, header_y), _fit(draw, columns[0], ref_room, face), fill=TEXT, font=face)
    for (_, x), name in zip(layout.clip_origins[0], columns[1:]):
        draw.text((x, header_y), _fit(draw, name, layout.cell_width, face), fill=TEXT, font=face)
    for row, refs, clips in zip(rows, layout.reference_origins, layout.clip_origins):
        y = clips[0][0]
        draw.text((MARGIN, y + layout.cell_height // 2 - FONT_SIZE // 2), row.label, fill=TEXT, font=face)
        for image, (ry, rx) in zip(row.references, refs):
            rw = round(image.shape[1] * layout.reference_height / image.shape[0])
            canvas.paste(Image.fromarray(enlarge(image, layout.reference_height, rw)), (rx, ry))
            draw.rectangle((rx - 1, ry - 1, rx + rw, ry + layout.reference_height), outline=BORDER)
        for (cy, cx), caption in zip(clips, row.captions):
            draw.rectangle((cx - 1, cy - 1, cx + layout.cell_width, cy + layout.cell_height), outline=BORDER)
            draw.text((cx, cy + layout.cell_height + 3), _fit(draw, caption, layout.cell_width, small),
                      fill=TEXT, font=small)
    return np.asarray(canvas, dtype=np.uint8)


def build_grid(rows: Sequence[GridRow], columns: Sequence[str], scale: float | None = None) -> tuple[np.ndarray, GridLayout]:
    """rows + column labels (references first, then one per model) -> frames uint8 [T, H, W, 3]
    (T = the longest clip; shorter ones hold their last frame) and where everything is."""
    if len(columns) != 1 + len(rows[0].clips):
        raise ValueError(f"grid: {len(columns)} column labels for references + {len(rows[0].clips)} models")
    layout = layout_grid(rows, scale)
    still = _background(rows, columns, layout)
    length = max(c.shape[0] for row in rows for c in row.clips)
    frames = np.repeat(still[None], length, axis=0)
    for row, origins in zip(rows, layout.clip_origins):
        for clip, (y, x) in zip(row.clips, origins):
            big = enlarge(clip, layout.cell_height, layout.cell_width)
            held = np.concatenate([big, np.repeat(big[-1:], length - len(big), axis=0)]) if len(big) < length else big
            frames[:, y : y + layout.cell_height, x : x + layout.cell_width] = held
    return frames, layout


def write_clean_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    """Looping GIF of uint8 [T, H, W, 3] with one palette for all frames and no dithering: per-frame
    dithered palettes sprinkle noise over small faces and make flat colours flicker. At most
    MAX_GIF_FRAMES frames (evenly thinned, playing at the same speed)."""
    thin = -(-len(frames) // MAX_GIF_FRAMES)
    frames, fps = frames[::thin], fps / thin
    step = max(1, len(frames) // 3)
    palette = Image.fromarray(np.concatenate(list(frames[::step]), axis=0)).quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def write_grid(frames: np.ndarray, stem: Path, fps: float) -> list[Path]:
    """stem.mp4, stem.gif and stem.png (the middle frame); returns their paths."""
    paths = [stem.with_suffix(".mp4"), stem.with_suffix(".gif"), stem.with_suffix(".png")]
    write_video(paths[0], frames, fps)
    write_clean_gif(paths[1], frames, fps)
    write_image(paths[2], frames[len(frames) // 2])
    return paths


def to_uint8(videos: torch.Tensor | np.ndarray) -> np.ndarray:
    """Clips [B, T, H, W, 3] float in [0, 1] (or uint8) -> uint8 numpy; NaN pixels black (a broken
    run's samples are shown as they are, without the cast's platform-dependent value and warning)."""
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().float().cpu().numpy()
    videos = np.asarray(videos)
    if videos.dtype == np.uint8:
        return videos
    return (np.clip(np.nan_to_num(videos, nan=0.0), 0.0, 1.0) * 255).round().astype(np.uint8)


def sample_grid(columns: Mapping[str, torch.Tensor | np.ndarray], references: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """columns: {label: clips [B, T, H, W, 3]} of the same B prompts; references: B lists of images.
    -> uint8 frames: one row per prompt, its references then one labelled column per set of clips."""
    clips = {name: to_uint8(c) for name, c in columns.items()}
    batch = len(references)
    if not clips or any(len(c) != batch for c in clips.values()):
        raise ValueError(f"sample_grid: every column needs {batch} clips (one per reference list), "
                         f"got {[len(c) for c in clips.values()]}")
    rows = [GridRow(list(references[b]), [c[b] for c in clips.values()], [""] * len(clips), f"#{b + 1}")
            for b in range(batch)]
    frames, _ = build_grid(rows, ["references", *clips])
    return frames


def save_grid(frames: np.ndarray, stem: str | Path, fps: float = 4.0) -> list[Path]:
    """Write stem.mp4, stem.gif and stem.png (the middle frame); returns the paths."""
    return write_grid(frames, Path(stem), fps)
