"""Video and image IO: decord for reading (uniform or fixed-rate frame sampling), PyAV for mp4.

Every array here is uint8 RGB: videos [T, H, W, 3], images [H, W, 3].
"""
from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)
_warned_short: set[str] = set()  # clips already warned about: a clip is read again every epoch


class VideoReadError(OSError):
    """A video or image file that is missing or cannot be decoded; the message names the path."""


def uniform_frame_indices(total: int, num: int) -> list[int]:
    """`num` indices spread evenly over `total` frames, first and last included.

    Rounds half up so the result does not depend on numpy's banker's rounding; `num > total`
    repeats frames, which keeps the output length fixed for models that need exactly `num`.
    """
    if total < 1 or num < 1:
        raise ValueError(f"need total >= 1 and num >= 1, got total={total}, num={num}")
    if num == 1:
        return [(total - 1) // 2]
    step = (total - 1) / (num - 1)
    return [int(math.floor(i * step + 0.5)) for i in range(num)]


def rate_frame_indices(total: int, source_fps: float, target_fps: float) -> list[int]:
    """Indices that resample a `total`-frame video from `source_fps` to `target_fps` (at least one)."""
    if source_fps <= 0 or target_fps <= 0:
        raise ValueError(f"fps must be > 0, got source {source_fps}, target {target_fps}")
    step = source_fps / target_fps
    count = max(1, int(math.floor((total - 1) / step)) + 1)
    return [min(total - 1, int(math.floor(i * step + 0.5))) for i in range(count)]


def fit_max_pixels(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) scaled down, aspect kept, so that height * width <= max_pixels."""
    if height * width <= max_pixels:
        return height, width
    factor = math.sqrt(max_pixels / (height * width))
    return max(1, int(height * factor)), max(1, int(width * factor))


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [T, height, width, 3] uint8 (antialiased bicubic)."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in frames])


def select_frames(total: int, source_fps: float, num_frames: int | None, fps: float | None) -> list[int]:
    """Which of `total` frames to keep: resampled to `fps` first, then `num_frames` uniformly."""
    indices = list(range(total))
    if fps is not None:
        indices = rate_frame_indices(total, source_fps, fps)
    if num_frames is not None:
        indices = [indices[i] for i in uniform_frame_indices(len(indices), num_frames)]
    return indices


def _pick_frames(path: Path, total: int, source_fps: float, num_frames: int | None, fps: float | None) -> list[int]:
    """select_frames, with a warning (once per file) when the clip has fewer frames than it is
    read at: the model then sees repeated frames, which a user should know about."""
    indices = select_frames(total, source_fps, num_frames, fps)
    distinct = len(set(indices))
    if num_frames is not None and distinct < num_frames and str(path) not in _warned_short:
        _warned_short.add(str(path))
        rate = f" at {fps:g} fps" if fps is not None else ""
        logger.warning("%s: %d frame(s)%s, read as num_frames=%d: frames are repeated",
                       path, distinct, rate, num_frames)
    return indices


def _decode_with_decord(path: Path, num_frames: int | None, fps: float | None) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    if len(reader) < 1:
        raise ValueError("video has no frames")
    return reader.get_batch(_pick_frames(path, len(reader), reader.get_avg_fps(), num_frames, fps)).asnumpy()


def _decode_with_pyav(path: Path, num_frames: int | None, fps: float | None) -> np.ndarray:
    """Decodes every frame, then selects: only for videos decord cannot read."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        source_fps = float(stream.average_rate or stream.guessed_rate or 0) or 1.0
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError("video has no frames")
    return np.stack([frames[i] for i in _pick_frames(path, len(frames), source_fps, num_frames, fps)])


def read_video(
    path: str | Path, num_frames: int | None = None, fps: float | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Decode frames of a video as uint8 [T, H, W, 3].

    fps: resample to this rate first; num_frames: then pick this many uniformly (with both,
    num_frames wins over the count fps would give; a clip with fewer frames repeats some, and
    a warning names it once). Neither: every frame. max_pixels: downscale
    each frame, keeping its aspect ratio, to at most this many pixels.

    decord decodes; PyAV takes over for the files decord 0.6 mis-sizes (some frame widths,
    e.g. 16, 24, 48 or 72 px, where it copies padded rows: dmlc/decord#336).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: video file not found")
    try:
        frames = _decode_with_decord(path, num_frames, fps)
    except Exception as decord_error:  # decord raises its own DECORDError and RuntimeError subclasses
        try:
            frames = _decode_with_pyav(path, num_frames, fps)
        except Exception as error:
            raise VideoReadError(
                f"{path}: cannot decode video (decord: {type(decord_error).__name__}: {decord_error}; "
                f"PyAV: {type(error).__name__}: {error})"
            ) from error
    if max_pixels is not None:
        frames = resize_frames(frames, *fit_max_pixels(frames.shape[1], frames.shape[2], max_pixels))
    return np.ascontiguousarray(frames, dtype=np.uint8)


def check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    return frames


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where H or W is odd: yuv420p stores chroma per 2x2 block."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


def write_video(
    path: str | Path, frames: np.ndarray, fps: float, crf: int = 12, pix_fmt: str = "yuv420p"
) -> None:
    """Write uint8 [T, H, W, 3] as an H.264 mp4.

    yuv420p (the default, what every player reads) needs even sizes: an odd height or width is
    padded by one repeated row/column, so the file is up to 1 px larger than `frames`. The codec
    is lossy; crf 12 keeps the tiny synthetic clips within a few grey levels on flat colours,
    but colour edges narrower than 2 px blur in yuv420p (use pix_fmt="yuv444p" to keep them).
    """
    import av

    frames = check_frames(frames)
    if pix_fmt == "yuv420p":
        frames = pad_to_even(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        # One thread: the builder already runs one encoder per core, and tiny frames gain nothing.
        # zerolatency (no lookahead, no B-frames) halves the set-up cost that dominates tiny clips.
        stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency", "threads": "1"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_image(path: str | Path) -> np.ndarray:
    """Any image PIL reads -> uint8 [H, W, 3] RGB."""
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as error:
        raise VideoReadError(f"{path}: cannot decode image ({type(error).__name__}: {error})") from error


def write_image(path: str | Path, image: np.ndarray) -> None:
    """uint8 [H, W, 3] -> image file, format from the extension (PNG is lossless)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
