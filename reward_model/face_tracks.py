"""Per-person face tracks through a clip, from per-frame face detections.

Frame by frame, the new detections are matched to the tracks so far by an optimal (Hungarian)
assignment on embedding similarity + box overlap. A detection may join a track when its face
looks like the track's person (cosine to the track's mean embedding >= link_similarity), or,
when the track was seen in the frame before, when the boxes overlap enough (IoU >= link_iou)
and the face is not plainly someone else (cosine >= min_similarity): the overlap carries a
track through a profile view or blur in which the embedding wavers, and the embedding carries
it across a jump (a missed frame, a cut) where boxes no longer overlap. A detection that joins
no track starts a new one. Tracks never end, so a person who is lost for a few frames is picked
up again by their likeness.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
from scipy.ndimage import laplace
from scipy.optimize import linear_sum_assignment

from identity_grpo.world.distortions import box_region
from identity_grpo.faces.identity_metrics import (
    DEFAULT_LINK_IOU,
    DEFAULT_LINK_SIMILARITY,
    DEFAULT_MIN_SIMILARITY,
    box_iou,
    unit_rows,
)

# Added to forbidden pairs so the assignment makes as many allowed links as it can first.
_FORBIDDEN = -1.0e6


class DetectedFace(Protocol):
    box: np.ndarray  # [4] float x0, y0, x1, y1 frame pixels
    embedding: np.ndarray  # [D] float unit-length face embedding


@dataclass
class FaceTrack:
    """One person's face through a clip: the frames it was detected in, with boxes and embeddings."""

    frames: list[int] = field(default_factory=list)  # increasing frame indices where detected
    boxes: list[np.ndarray] = field(default_factory=list)  # per detected frame [4] float x0, y0, x1, y1
    embeddings: list[np.ndarray] = field(default_factory=list)  # per detected frame [D] float unit embedding

    def add(self, frame: int, face: DetectedFace) -> None:
        self.frames.append(frame)
        self.boxes.append(np.asarray(face.box, dtype=np.float64))
        self.embeddings.append(np.asarray(face.embedding, dtype=np.float64))

    def mean_embedding(self) -> np.ndarray:
        """[D] unit-length mean of the track's embeddings: the person's likeness over many poses."""
        return unit_rows(np.mean(self.embeddings, axis=0)[None])[0]

    def box_per_frame(self, num_frames: int) -> np.ndarray:
        """[num_frames, 4] float64 boxes: detected where detected, linearly interpolated between
        detections, held at the first / last detection before / after them."""
        boxes = np.stack(self.boxes)
        return np.stack([np.interp(np.arange(num_frames), self.frames, boxes[:, k]) for k in range(4)], axis=1)


def track_faces(
    frame_faces: Sequence[Sequence[DetectedFace]],
    link_similarity: float = DEFAULT_LINK_SIMILARITY,
    link_iou: float = DEFAULT_LINK_IOU,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
) -> list[FaceTrack]:
    """Detections of T frames (each frame: faces with .box [4] and .embedding [D]) -> tracks, in
    order of first appearance (see the module doc for the linking rule)."""
    tracks: list[FaceTrack] = []
    for t, faces in enumerate(frame_faces):
        if not faces:
            continue
        links: list[tuple[int, int]] = []
        if tracks:
            embeddings = unit_rows(np.stack([f.embedding for f in faces]))
            similarity = np.stack([track.mean_embedding() for track in tracks]) @ embeddings.T  # [K, F]
            overlap = box_iou(np.stack([track.boxes[-1] for track in tracks]), np.stack([f.box for f in faces]))
            recent = np.array([track.frames[-1] == t - 1 for track in tracks])[:, None]
            allowed = (similarity >= link_similarity) | (recent & (overlap >= link_iou) & (similarity >= min_similarity))
            rows, cols = linear_sum_assignment(np.where(allowed, similarity + overlap, _FORBIDDEN), maximize=True)
            links = [(int(k), int(j)) for k, j in zip(rows, cols) if allowed[k, j]]
        for k, j in links:
            tracks[k].add(t, faces[j])
        linked = {j for _, j in links}
        for j, face in enumerate(faces):
            if j not in linked:
                tracks.append(FaceTrack())
                tracks[-1].add(t, face)
    return tracks


def people_tracks(tracks: Sequence[FaceTrack], num_frames: int, min_coverage: float) -> list[FaceTrack]:
    """The tracks detected in at least min_coverage of the frames, left to right by mean box centre.

    With min_coverage > 0.5 two kept tracks share most frames, so they are two people rather
    than one person's track broken in two.
    """
    kept = [track for track in tracks if len(track.frames) >= min_coverage * num_frames]
    return sorted(kept, key=lambda track: float(np.mean([(b[0] + b[2]) / 2 for b in track.boxes])))


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image uint8 [h, w, 3]: high for crisp detail, low for blur."""
    if image.shape[0] < 3 or image.shape[1] < 3:
        return 0.0
    return float(laplace(image.astype(np.float64).mean(axis=-1)).var())


def crop_box(frame: np.ndarray, box: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """frame uint8 [H, W, 3] -> the pixels of box [4] widened by margin * its size on every side (clipped)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    r0, r1, c0, c1 = box_region(np.array([x0 - dx, y0 - dy, x1 + dx, y1 + dy]), *frame.shape[:2])
    return frame[r0:r1, c0:c1]


def sharpest_face(frames: np.ndarray, track: FaceTrack, margin: float) -> np.ndarray:
    """The crop (margin around the box) of the track's sharpest detected face in frames uint8 [T, H, W, 3]."""
    scores = [sharpness(crop_box(frames[t], box)) for t, box in zip(track.frames, track.boxes)]
    best = int(np.argmax(scores))
    return np.ascontiguousarray(crop_box(frames[track.frames[best]], track.boxes[best], margin))
