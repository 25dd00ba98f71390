"""Tiny ONNX face models with known outputs, laid out as an insightface model pack.

insightface routes an .onnx file by its shapes: >= 5 outputs is an SCRFD detector (9 outputs:
score/box/landmarks at strides 8, 16, 32, two anchors per location), a square >= 112 input
with one output is an ArcFace recognizer. These two models have those shapes and behave
predictably, so tests can assert where faces are found and what their embeddings are:

- the detector finds a "face" in every 32x32 cell (aligned to the 32-pixel grid) whose mean
  brightness is well above black; the box is that cell, stretched right and down by the cell's
  green level when it is above mid-grey (so a test can make one face larger than another), and
  the five landmarks are ArcFace's canonical template scaled into the cell, so alignment maps
  the cell onto the crop;
- the recognizer's embedding is a fixed linear map of the mean colour at the crop's centre.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from insightface.utils.face_align import arcface_dst
from torch import nn

CELL = 32  # detection cell = stride of the only level that fires, in pixels
STRIDES = (8, 16, 32)
CROP = 112  # ArcFace input size
EMBEDDING_DIM = 512


class TinyDetector(nn.Module):
    """[1, 3, H, W] normalised RGB -> 3 scores [N_s, 1], 3 box distances [N_s, 4], 3 landmarks [N_s, 10]."""

    def __init__(self) -> None:
        super().__init__()
        # Per level: logit = gain * cell brightness + bias. Strides 8 and 16 never fire.
        self.register_buffer("gain", torch.tensor([0.0, 0.0, 20.0]))
        self.register_buffer("bias", torch.tensor([-30.0, -30.0, 10.0]))  # stride 32 fires above -0.5
        # Distances in stride units from the anchor (the cell's top-left corner): the cell itself ...
        self.register_buffer("box", torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
        # ... plus, right and bottom, the cell's normalised green level when positive.
        self.register_buffer("stretch", torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
        self.register_buffer("landmarks", torch.from_numpy(arcface_dst.reshape(1, 10) / CROP))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        brightness = x.mean(dim=1, keepdim=True)  # [1, 1, H, W]
        scores, boxes, landmarks = [], [], []
        for level, stride in enumerate(STRIDES):
            # Per cell, row-major like SCRFD's anchors, repeated for its two anchors (location-major).
            cells = nn.functional.avg_pool2d(brightness, stride).reshape(-1, 1).repeat(1, 2).reshape(-1, 1)
            green = nn.functional.avg_pool2d(x[:, 1:2], stride).reshape(-1, 1).repeat(1, 2).reshape(-1, 1)
            score = torch.sigmoid(self.gain[level] * cells + self.bias[level])  # [N_s, 1]
            scores.append(score)
            boxes.append(self.box + torch.relu(green) * self.stretch)
            landmarks.append(torch.ones_like(score) * self.landmarks)
        return (*scores, *boxes, *landmarks)


class TinyRecognizer(nn.Module):
    """[B, 3, 112, 112] normalised RGB -> [B, 512] = weight @ mean colour of the central 56x56."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)  # [512, 3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        colour = x[:, :, CROP // 4 : 3 * CROP // 4, CROP // 4 : 3 * CROP // 4].mean(dim=(2, 3))  # [B, 3]
        return colour @ self.weight.T


def recognizer_weight(seed: int = 0) -> np.ndarray:
    """[512, 3] the recognizer's colour-to-embedding map."""
    return np.random.default_rng(seed).normal(size=(EMBEDDING_DIM, 3)).astype(np.float32)


def expected_embedding(rgb: tuple[int, int, int], weight: np.ndarray) -> np.ndarray:
    """[512] what the pack should return for a face of colour `rgb`: ArcFace input normalisation
    (x - 127.5) / 127.5, the linear map, then unit length."""
    colour = (np.asarray(rgb, dtype=np.float64) - 127.5) / 127.5
    e = weight.astype(np.float64) @ colour
    return e / np.linalg.norm(e)


def expected_box(x0: float, y0: float, rgb: tuple[int, int, int]) -> np.ndarray:
    """[4] box of the face of colour `rgb` in the cell whose top-left corner is (x0, y0)."""
    side = CELL * (1.0 + max((rgb[1] - 127.5) / 128.0, 0.0))  # SCRFD input normalisation is /128
    return np.array([x0, y0, x0 + side, y0 + side])


def expected_landmarks(x0: float, y0: float) -> np.ndarray:
    """[5, 2] landmarks of the face in the cell whose top-left corner is (x0, y0)."""
    return np.array([x0, y0]) + arcface_dst * (CELL / CROP)


def write_pack(folder: Path, weight: np.ndarray, with_detector: bool = True) -> Path:
    """Export the tiny detector and recognizer as .onnx files into `folder` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (dynamo=False) is deliberate: it writes these small graphs with
    # plain dynamic axes in one quick pass; its deprecation notices are noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if with_detector:
            names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
            torch.onnx.export(
                TinyDetector(),
                (torch.zeros(1, 3, 2 * CELL, 2 * CELL),),
                str(folder / "det_tiny.onnx"),
                input_names=["input.1"],
                output_names=names,
                dynamic_axes={"input.1": {2: "height", 3: "width"}, **{n: {0: f"anchors_{n}"} for n in names}},
                dynamo=False,
            )
        torch.onnx.export(
            TinyRecognizer(torch.from_numpy(weight)),
            (torch.zeros(1, 3, CROP, CROP),),
            str(folder / "rec_tiny.onnx"),
            input_names=["input.1"],
            output_names=["embedding"],
            dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
            dynamo=False,
        )
    return folder


def paint_faces(height: int, width: int, faces: list[tuple[int, int, tuple[int, int, int]]]) -> np.ndarray:
    """[H, W, 3] uint8 RGB black frame with a CELL-sized square of colour at each (x0, y0)."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    for x0, y0, rgb in faces:
        frame[y0 : y0 + CELL, x0 : x0 + CELL] = rgb
    return frame
