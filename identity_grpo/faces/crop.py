"""Differentiable face crops: where a face is comes from a detector (no gradient), what it looks like
is resampled from the frame with `grid_sample`, so a face-similarity loss reaches the pixels.

Coordinates: frames are indexed by pixel, a pixel's centre sits at its integer index, and a box
(x0, y0, x1, y1) covers the pixels x0 <= x < x1 (x1, y1 exclusive, as detectors report them).

- `crop_faces`: the box, made square about its centre and widened by `margin`, is resampled to
  size x size; the crop's corner pixels land on the centres of the box's corner pixels, so every
  sample stays inside the box: a box of exactly size x size pixels is copied unchanged, and
  gradients do not leak to pixels outside it (beyond float32 rounding of grid_sample's [-1, 1]
  coordinates, about 1e-7 relative; none at all when the frame side is a power of two).
- `align_faces`: the similarity transform (rotation, uniform scale, shift; least squares) that
  carries five landmarks onto ArcFace's template, the warp insightface's `norm_crop` applies with
  OpenCV before its recognizer; outside the frame reads as black, as there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ArcFace's five landmarks (x, y) in a 112 x 112 aligned crop: left eye, right eye, nose tip,
# left and right mouth corners (insightface's `arcface_dst`, measured on its training crops).
ARCFACE_TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


def crop_faces(frames: torch.Tensor, boxes: torch.Tensor, size: int = 112, margin: float = 0.0) -> torch.Tensor:
    """frames [N, C, H, W] float, boxes [N, 4] (x0, y0, x1, y1) pixels -> [N, C, size, size] square crops.

    A box is first made square (its longer side, same centre) so faces are never stretched, then
    widened by `margin` times its side on each side. Differentiable w.r.t. frames, not boxes.
    """
    _check_frames(frames, "crop_faces", size)
    boxes = boxes.detach().to(device=frames.device, dtype=torch.float64)
    if boxes.ndim != 2 or boxes.shape != (len(frames), 4):
        raise ValueError(f"crop_faces: boxes must be [{len(frames)}, 4] (one per frame), got {tuple(boxes.shape)}")
    if margin < 0:
        raise ValueError(f"crop_faces: margin must be >= 0, got {margin}")
    return _sample(frames, box_to_crop_affine(boxes, size, margin), size)


def align_faces(frames: torch.Tensor, landmarks: torch.Tensor, size: int = 112) -> torch.Tensor:
    """frames [N, C, H, W] float, landmarks [N, 5, 2] (x, y) pixels -> [N, C, size, size] ArcFace-aligned crops.

    The template is ArcFace's 112-pixel one scaled by size / 112. Differentiable w.r.t. frames.
    """
    _check_frames(frames, "align_faces", size)
    landmarks = landmarks.detach().to(device=frames.device, dtype=torch.float64)
    if landmarks.shape != (len(frames), 5, 2):
        raise ValueError(f"align_faces: landmarks must be [{len(frames)}, 5, 2], got {tuple(landmarks.shape)}")
    template = torch.tensor(ARCFACE_TEMPLATE_112, dtype=torch.float64, device=frames.device) * (size / 112.0)
    to_template = similarity_transform(landmarks, template.expand_as(landmarks))
    return _sample(frames, invert_similarity(to_template), size)


def box_to_crop_affine(boxes: torch.Tensor, size: int, margin: float = 0.0) -> torch.Tensor:
    """boxes [N, 4] -> [N, 2, 3] affine taking crop pixel (j, i, 1) to frame pixel (x, y); see crop_faces."""
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + 2 * margin)
    # The square covers pixels first .. first + side - 1; those corner pixels become the crop's.
    first_x = centre_x - side / 2
    first_y = centre_y - side / 2
    step = (side - 1).clamp_min(0) / (size - 1)
    zero = torch.zeros_like(step)
    return torch.stack(
        [torch.stack([step, zero, first_x], dim=-1), torch.stack([zero, step, first_y], dim=-1)], dim=-2
    )


def similarity_transform(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """source, target [N, K, 2] points -> [N, 2, 3] least-squares similarity taking source to target.

    Writing the transform as [[a, -b], [b, a]] p + t makes the fit linear; over rotation + uniform
    scale this is the same optimum as Umeyama's method (what skimage's SimilarityTransform uses).
    """
    source_mean, target_mean = source.mean(dim=1, keepdim=True), target.mean(dim=1, keepdim=True)
    s, d = source - source_mean, target - target_mean
    norm = (s**2).sum(dim=(1, 2)).clamp_min(1e-12)
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(dim=1) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1) / norm
    linear = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=-2)  # [N, 2, 2]
    shift = target_mean[:, 0] - (linear @ source_mean[:, 0, :, None])[..., 0]
    return torch.cat([linear, shift[..., None]], dim=-1)


def invert_similarity(transform: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3] affine with an invertible linear part -> [N, 2, 3] inverse."""
    inverse = torch.linalg.inv(transform[:, :, :2])
    return torch.cat([inverse, -(inverse @ transform[:, :, 2:])], dim=-1)


def _sample(frames: torch.Tensor, crop_to_frame: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear samples of frames at crop_to_frame [N, 2, 3] (crop pixel -> frame pixel) -> [N, C, size, size]."""
    height, width = frames.shape[-2:]
    index = torch.arange(size, dtype=torch.float64, device=frames.device)
    i, j = torch.meshgrid(index, index, indexing="ij")
    crop_pixels = torch.stack([j, i, torch.ones_like(j)], dim=-1)  # [size, size, 3] (x, y, 1)
    frame_xy = torch.einsum("nrc,hwc->nhwr", crop_to_frame, crop_pixels)  # [N, size, size, 2]
    # grid_sample's [-1, 1] spans the frame's outer pixel edges (align_corners=False): centre of pixel k -> (2k + 1) / W - 1.
    extent = torch.tensor([width, height], dtype=torch.float64, device=frames.device)
    grid = (2 * frame_xy + 1) / extent - 1
    return F.grid_sample(frames, grid.to(frames.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def _check_frames(frames: torch.Tensor, caller: str, size: int) -> None:
    if frames.ndim != 4 or not frames.is_floating_point():
        raise ValueError(f"{caller}: frames must be a float [N, C, H, W] tensor, got {frames.dtype} {tuple(frames.shape)}")
    if size < 2:
        raise ValueError(f"{caller}: size must be >= 2 pixels, got {size}")
