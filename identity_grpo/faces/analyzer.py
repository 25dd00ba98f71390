"""Real faces: detection and ArcFace embeddings from an insightface model pack on disk.

insightface's FaceAnalysis downloads a missing model pack on first use. The machines this
project runs on reach no model hub, and a download in the middle of a training job is
unwelcome anyway, so the pack folder is checked first and a missing pack is an error that says
where to put it; insightface is then handed the folder itself, which it never downloads into.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime
from PIL import Image

from identity_grpo.core.config_io import ConfigError


class FaceModelsMissing(FileNotFoundError):
    """The insightface model pack is not on disk (or holds no usable detector / recognizer)."""


class FaceNotFound(ValueError):
    """A reference image in which the detector finds no face."""


@dataclass
class FaceAnalyzerConfig:
    pack: str = "antelopev2"  # insightface model pack: a folder of .onnx files in root/models/ (or buffalo_l, ...)
    root: str = "~/.insightface"
    providers: list[str] = field(default_factory=list)  # onnxruntime providers; empty: CUDA first if available, CPU
    det_size: list[int] = field(default_factory=lambda: [640, 640])  # detector input [width, height]
    det_thresh: float = 0.5
    max_faces: int = 0  # per frame keep the N largest, most central faces; 0 keeps all
    batch_size: int = 64  # aligned crops per recognizer call

    def validate(self) -> None:
        if not self.pack or os.sep in self.pack:
            raise ConfigError(f"faces.pack: a model pack name (a folder in root/models/), got {self.pack!r}")
        if len(self.det_size) != 2 or any(s <= 0 or s % 32 for s in self.det_size):
            raise ConfigError(f"faces.det_size: [width, height], positive multiples of 32, got {self.det_size}")
        if not 0.0 < self.det_thresh < 1.0:
            raise ConfigError(f"faces.det_thresh: must be in (0, 1), got {self.det_thresh}")
        if self.max_faces < 0:
            raise ConfigError(f"faces.max_faces: must be >= 0 (0 keeps all), got {self.max_faces}")
        if self.batch_size < 1:
            raise ConfigError(f"faces.batch_size: must be >= 1, got {self.batch_size}")

    @property
    def pack_dir(self) -> Path:
        return Path(self.root).expanduser() / "models" / self.pack


@dataclass
class Face:
    box: np.ndarray  # [4] float32 x0, y0, x1, y1 in frame pixels
    score: float  # detector confidence
    landmarks: np.ndarray  # [5, 2] float32 (x, y): eyes, nose tip, mouth corners
    embedding: np.ndarray  # [D] float32 unit-length ArcFace embedding (D = 512)
    crop: np.ndarray | None = None  # [S, S, 3] uint8 BGR aligned crop it was embedded from (other recognizers reuse it)


def default_providers() -> list[str]:
    available = onnxruntime.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def provider_options(providers: Sequence[str]) -> list[dict[str, int]]:
    """Each provider's session options: a GPU provider runs on this process's GPU, LOCAL_RANK (set per
    process by torchrun and accelerate launch, which put the process's torch models there too; 0 for
    a single process). Without a device_id onnxruntime puts every process's sessions on GPU 0."""
    gpu = {"device_id": int(os.environ.get("LOCAL_RANK", "0"))}
    return [dict(gpu) if provider in GPU_PROVIDERS else {} for provider in providers]


def require_pack(config: FaceAnalyzerConfig) -> Path:
    """The pack folder, or FaceModelsMissing saying where it was looked for and how to get it."""
    folder = config.pack_dir
    if any(folder.glob("*.onnx")):
        return folder
    nested = folder / config.pack
    hint = (
        f" {nested} holds .onnx files: the zip was unpacked one folder too deep; move them up into {folder}."
        if any(nested.glob("*.onnx"))
        else ""
    )
    raise FaceModelsMissing(
        f"insightface model pack '{config.pack}' not found: no .onnx files in {folder}.{hint} "
        f"Get '{config.pack}.zip' from the insightface model zoo (github.com/deepinsight/insightface, "
        f"model packs antelopev2 / buffalo_l) and unzip it so the .onnx files lie directly in {folder} "
        f"(or point faces.root at the folder that holds models/{config.pack}). "
        "Nothing is downloaded automatically."
    )


class FaceAnalyzer:
    """Detector + ArcFace recognizer of one insightface pack, sessions built once and reused."""

    def __init__(self, config: FaceAnalyzerConfig | None = None) -> None:
        self.config = config or FaceAnalyzerConfig()
        self.config.validate()
        folder = require_pack(self.config)
        # Imported here: insightface pulls in OpenCV, ONNX and scikit-image, which only real-face
        # users should pay for.
        from insightface.app import FaceAnalysis
        from insightface.utils import face_align

        self._norm_crop = face_align.norm_crop
        providers = self.config.providers or default_providers()
        try:
            # A folder path as `name` makes insightface use it as is: no lookup, no download.
            app = FaceAnalysis(
                name=str(folder.resolve()),
                root=str(Path(self.config.root).expanduser()),
                providers=providers,
                provider_options=provider_options(providers),
                allowed_modules=["detection", "recognition"],
            )
        except AssertionError as error:  # insightface asserts that a detector was found
            raise FaceModelsMissing(
                f"{folder}: none of its .onnx files is a face detector insightface recognises (SCRFD)"
            ) from error
        if "recognition" not in app.models:
            raise FaceModelsMissing(f"{folder}: none of its .onnx files is an ArcFace recognizer (square >= 112 input)")
        app.prepare(ctx_id=0, det_thresh=self.config.det_thresh, det_size=tuple(self.config.det_size))
        self._detector = app.det_model
        self._recognizer = app.models["recognition"]
        self.crop_size = int(self._recognizer.input_size[0])  # aligned face side in pixels (112)
        self.embedding_dim = int(self._recognizer.output_shape[-1])

    def detect(self, frames: np.ndarray) -> list[list[Face]]:
        """frames uint8 [T, H, W, 3] RGB -> per frame the faces found, each with its embedding."""
        frames = _check_image(frames, "frames", ndim=4)
        detections = []  # per frame: boxes+scores [n, 5], landmarks [n, 5, 2]
        crops = []
        for frame in frames:
            bgr = np.ascontiguousarray(frame[..., ::-1])  # insightface works in OpenCV's BGR
            boxes, landmarks = self._detect_bgr(bgr)
            detections.append((boxes, landmarks))
            crops.extend(self._norm_crop(bgr, landmark=k, image_size=self.crop_size) for k in landmarks)
        embeddings = self._embed_bgr(crops)
        faces, start = [], 0
        for boxes, landmarks in detections:
            faces.append(
                [
                    Face(
                        box=boxes[i, :4].astype(np.float32),
                        score=float(boxes[i, 4]),
                        landmarks=landmarks[i].astype(np.float32),
                        embedding=embeddings[start + i],
                        crop=crops[start + i],
                    )
                    for i in range(len(boxes))
                ]
            )
            start += len(boxes)
        return faces

    def embed_references(self, images: Sequence[np.ndarray | str | Path]) -> np.ndarray:
        """Reference images (uint8 [H, W, 3] RGB or image paths) -> [P, D], the largest face of each."""
        return self._embed_bgr(self.reference_crops(images))

    def reference_crops(self, images: Sequence[np.ndarray | str | Path]) -> list[np.ndarray]:
        """Reference images -> the aligned BGR crop [S, S, 3] of the largest face of each."""
        crops = []
        for index, image in enumerate(images):
            name = f"reference {index}" + (f" ({image})" if isinstance(image, (str, Path)) else "")
            bgr = np.ascontiguousarray(_load_rgb(image, name)[..., ::-1])
            boxes, landmarks = self._detect_bgr(bgr)
            if len(boxes) == 0:
                raise FaceNotFound(
                    f"{name}: no face found (det_thresh={self.config.det_thresh}, det_size={self.config.det_size})"
                )
            largest = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
            crops.append(self._norm_crop(bgr, landmark=landmarks[largest], image_size=self.crop_size))
        return crops

    def _detect_bgr(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[H, W, 3] BGR -> boxes with scores [n, 5], landmarks [n, 5, 2]."""
        boxes, landmarks = self._detector.detect(bgr, max_num=self.config.max_faces)
        if landmarks is None:
            raise FaceModelsMissing(
                f"{self.config.pack_dir}: the detector has no landmark outputs, which ArcFace alignment needs "
                "(use a 5-point SCRFD such as the packs' scrfd_10g_bnkps / det_10g)"
            )
        return boxes, landmarks

    def _embed_bgr(self, crops: list[np.ndarray]) -> np.ndarray:
        """Aligned BGR crops [S, S, 3] -> [N, D] float32 unit embeddings, batch_size crops per call."""
        if not crops:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        size = self.config.batch_size
        raw = np.concatenate([self._recognizer.get_feat(crops[i : i + size]) for i in range(0, len(crops), size)])
        raw = raw.astype(np.float32)
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)


def stack_faces(frame_faces: list[list[Face]], embedding_dim: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-frame faces -> (embeddings T x [F_t, D], boxes T x [F_t, 4]): identity_metrics' inputs."""
    embeddings = [
        np.stack([f.embedding for f in faces]) if faces else np.zeros((0, embedding_dim), np.float32)
        for faces in frame_faces
    ]
    boxes = [np.stack([f.box for f in faces]) if faces else np.zeros((0, 4), np.float32) for faces in frame_faces]
    return embeddings, boxes


def _check_image(x: np.ndarray, name: str, ndim: int) -> np.ndarray:
    shape = "[N, H, W, 3]" if ndim == 4 else "[H, W, 3]"
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != ndim or x.shape[-1] != 3:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{name}: expected uint8 {shape} RGB, got {got}")
    return x


def _load_rgb(image: np.ndarray | str | Path, name: str) -> np.ndarray:
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{name}: no such image file")
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    return _check_image(image, name, ndim=3)
