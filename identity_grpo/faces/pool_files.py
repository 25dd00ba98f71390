"""Pools of each person's face embeddings, from the images and videos a prompt manifest names.

A prompt row may carry `pool_paths`: per person (in reference order) a list of image or video
files that show them, e.g. the ground-truth clip the prompt was written for, or several photos.
Such files may show the other people too, so in every frame of them the faces are matched to
the row's references (the Hungarian assignment of identity_grpo.faces.identity_metrics.match_faces)
and only the face matched to the person joins that person's pool.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np

from identity_grpo.faces.analyzer import Face, stack_faces
from identity_grpo.faces.identity_metrics import match_faces
from identity_grpo.core.video import read_image, read_video

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CACHED_FILES = 1024  # pool files whose faces are kept (about 0.1 MB each at 16 frames, 3 faces)


class FaceEmbedder(Protocol):
    """What is needed of identity_grpo.faces.analyzer.FaceAnalyzer."""

    embedding_dim: int

    def detect(self, frames: np.ndarray) -> list[list[Face]]: ...  # uint8 [T, H, W, 3] -> faces per frame


class FacePools:
    """Reads and embeds pool files once (a prompt comes back every few iterations) and builds pools."""

    def __init__(self, analyzer: FaceEmbedder, num_frames: int, root: str | Path = "") -> None:
        self.analyzer = analyzer
        self.num_frames = num_frames  # frames taken uniformly from each pool video
        self.root = Path(root)  # relative pool paths are resolved against it
        self._faces: OrderedDict[Path, list[np.ndarray]] = OrderedDict()  # file -> per frame [F_t, D] embeddings

    def faces_in(self, path: str | Path) -> list[np.ndarray]:
        """Per frame of an image (one frame) or a video (num_frames frames): the face embeddings [F_t, D]."""
        path = Path(path) if Path(path).is_absolute() else self.root / path
        if path not in self._faces:
            if not path.is_file():
                raise FileNotFoundError(f"pool file not found: {path} (relative pool_paths are resolved against "
                                        f"options.pool_root = {str(self.root)!r})")
            if path.suffix.lower() in IMAGE_SUFFIXES:
                frames = read_image(path)[None]
            else:
                frames = read_video(path, num_frames=self.num_frames)
            self._faces[path] = stack_faces(self.analyzer.detect(frames), self.analyzer.embedding_dim)[0]
            if len(self._faces) > CACHED_FILES:
                self._faces.popitem(last=False)
        self._faces.move_to_end(path)
        return self._faces[path]

    def pools(self, pool_paths: object, references: np.ndarray, min_similarity: float) -> list[np.ndarray]:
        """pool_paths (P lists of paths), references [P, D] -> P pools [M_p, D]: person p's face in every
        frame of the files listed for p (matched against all P references)."""
        people = len(references)
        if not (isinstance(pool_paths, list) and len(pool_paths) == people
                and all(isinstance(paths, list) and paths and all(isinstance(p, str) and p for p in paths)
                        for paths in pool_paths)):
            raise ValueError(f"field 'pool_paths': expected {people} non-empty lists of image or video paths "
                             f"(one per reference, in order), got {pool_paths!r}")
        pools = []
        for person, paths in enumerate(pool_paths):
            faces = []
            for path in paths:
                for frame in self.faces_in(path):
                    face = match_faces(frame, references, min_similarity).face_of_person[person]
                    if face >= 0:
                        faces.append(frame[face])
            if not faces:
                raise ValueError(f"field 'pool_paths[{person}]': no face of person {person} found in {paths}")
            pools.append(np.stack(faces))
        return pools
