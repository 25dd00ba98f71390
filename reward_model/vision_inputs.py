"""uint8 images and clips -> Qwen2.5-VL vision inputs (`pixel_values`, `grid_thw`), without torchvision.

transformers' Qwen video processor needs torchvision, which has no CPU build here, so this module
does the same steps itself: smart-resize to multiples of patch_size * merge_size within
[min_pixels, max_pixels] (PIL bicubic, as the image processor), rescale to [0, 1], normalize with
the processor's mean/std, and cut (temporal x spatial) patches in Qwen's order, which puts the
2x2 patches that the merger fuses next to each other. An image is repeated to fill one temporal
patch; a clip with an odd frame count repeats its last frame.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionSpec:
    """How frames become patches: the vision tower's geometry plus the processor's pixel budget."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this (one merged token covers factor x factor pixels)."""
        return self.patch_size * self.merge_size

    def with_pixels(self, min_pixels: int, max_pixels: int) -> "VisionSpec":
        return dataclasses.replace(self, min_pixels=min_pixels, max_pixels=max_pixels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "VisionSpec":
        return cls(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})

    @classmethod
    def from_model_config(cls, config, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280) -> "VisionSpec":
        """Geometry from a Qwen2_5_VLConfig; mean/std are Qwen's (OpenAI CLIP) ones."""
        vision = config.vision_config
        return cls(vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size, min_pixels, max_pixels)

    def to_processor_config(self) -> dict[str, Any]:
        """The `preprocessor_config.json` of a Qwen2-VL image processor with this geometry and budget."""
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "resample": 3,  # PIL bicubic
        }

    @classmethod
    def from_processor_config(cls, source: str | Path | dict[str, Any]) -> "VisionSpec":
        """From a `preprocessor_config.json` (path or parsed dict), old (min/max_pixels) or new (size) style."""
        name = str(source) if not isinstance(source, dict) else "<preprocessor config>"
        raw = source if isinstance(source, dict) else json.loads(Path(source).read_text())

        def field(key: str, *fallback: str) -> Any:
            for k in (key, *fallback):
                if k in raw:
                    return raw[k]
            raise ValueError(f"{name}: missing field '{key}'")

        size = raw.get("size") or {}
        return cls(
            patch_size=int(field("patch_size")),
            temporal_patch_size=int(field("temporal_patch_size")),
            merge_size=int(field("merge_size")),
            min_pixels=int(raw.get("min_pixels") or size.get("shortest_edge") or field("min_pixels")),
            max_pixels=int(raw.get("max_pixels") or size.get("longest_edge") or field("max_pixels")),
            mean=tuple(float(v) for v in field("image_mean")),
            std=tuple(float(v) for v in field("image_std")),
        )


@dataclass
class VisionInput:
    """One image or clip, patchified."""

    pixel_values: torch.Tensor  # [N, C * temporal_patch * patch * patch] float32, N = t * h * w
    grid_thw: torch.Tensor  # [3] long: temporal, height, width patch counts

    def num_tokens(self, merge_size: int) -> int:
        """Placeholder tokens this input takes in the prompt (each merged 2x2 group is one token)."""
        return int(self.grid_thw.prod()) // merge_size**2


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's rule: nearest multiples of `factor`, rescaled (aspect kept) into [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of a {height}x{width} image is above 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def as_uint8(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 as is; floats are taken as [0, 1] and rounded to uint8. Any device; returns a host array."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            frames = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return frames.cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    return frames


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, height, width, 3], PIL bicubic (the Qwen image processor's filter)."""
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in frames])


def patchify(frames: torch.Tensor, spec: VisionSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized frames [T, C, H, W] -> (pixel_values [N, C*tp*p*p], grid_thw [3])."""
    tp, p, m = spec.temporal_patch_size, spec.patch_size, spec.merge_size
    t, c, h, w = frames.shape
    if h % (p * m) or w % (p * m):
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch_size * merge_size = {p * m}")
    if t % tp:
        frames = torch.cat([frames, frames[-1:].expand(tp - t % tp, -1, -1, -1)])
    gt, gh, gw = frames.shape[0] // tp, h // p, w // p
    patches = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # -> (t, h-group, w-group, h-in-group, w-in-group, C, tp, ph, pw): a merged 2x2 group is contiguous.
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(gt * gh * gw, c * tp * p * p), torch.tensor([gt, gh, gw], dtype=torch.long)


def video_to_vision_input(frames: np.ndarray | torch.Tensor, spec: VisionSpec) -> VisionInput:
    """A clip [T, H, W, 3] (uint8, or float in [0, 1]) -> patches; every frame gets the same size."""
    frames = as_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {tuple(frames.shape)}")
    height, width = smart_resize(frames.shape[1], frames.shape[2], spec.factor, spec.min_pixels, spec.max_pixels)
    pixels = torch.from_numpy(resize_frames(frames, height, width)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    return VisionInput(*patchify((pixels - mean) / std, spec))


def image_to_vision_input(image: np.ndarray | torch.Tensor, spec: VisionSpec) -> VisionInput:
    """An image [H, W, 3] -> patches with grid t = 1 (the image fills one temporal patch)."""
    frames = as_uint8(image)[None]
    if frames.shape[-1] != 3 or frames.ndim != 4:
        raise ValueError(f"expected an image [H, W, 3], got shape {tuple(frames.shape[1:])}")
    return video_to_vision_input(np.repeat(frames, spec.temporal_patch_size, axis=0), spec)


def concat_vision_inputs(inputs: Sequence[VisionInput]) -> tuple[torch.Tensor, torch.Tensor]:
    """Many inputs -> (pixel_values [sum N, D], grid_thw [len(inputs), 3]), the layout Qwen's forward takes."""
    if not inputs:
        raise ValueError("concat_vision_inputs needs at least one input")
    return torch.cat([v.pixel_values for v in inputs]), torch.stack([v.grid_thw for v in inputs])
