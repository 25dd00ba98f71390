"""Multi-person identity metrics from per-frame face embeddings (no model: numpy + scipy).

With several people in a clip a face must be judged against the person it shows, not against
whichever reference happens to be closest on its own: every frame's faces are matched to the
reference people by an optimal (Hungarian) assignment on cosine similarity. From the per-frame
assignments come per-person similarity, missing people, identity swaps along face tracks and
temporal consistency. `pool_similarity` is IPRO's facial score: mean cosine over a pool of
ground-truth face embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

# ArcFace cosine between photos of different people is mostly below ~0.2, of one person above
# ~0.3: a face below this is "nobody we were asked about" rather than a poor likeness.
DEFAULT_MIN_SIMILARITY = 0.2
# Faces in consecutive frames belong to one track when their boxes overlap this much ...
DEFAULT_LINK_IOU = 0.3
# ... or, without boxes, when their embeddings are this similar.
DEFAULT_LINK_SIMILARITY = 0.5
# Added to forbidden pairs so the assignment first matches as many allowed pairs as it can and
# only then maximises similarity; larger than any total of cosines it competes with.
_FORBIDDEN = -1.0e6


def unit_rows(x: np.ndarray) -> np.ndarray:
    """[N, D] -> rows scaled to unit length (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [N, D], b [M, D] -> [N, M] cosine similarities."""
    return unit_rows(a) @ unit_rows(b).T


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [N, 4], b [M, 4] boxes (x0, y0, x1, y1) -> [N, M] intersection over union."""
    a = np.asarray(a, dtype=np.float64)[:, None, :]
    b = np.asarray(b, dtype=np.float64)[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    intersection = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return intersection / np.maximum(area_a + area_b - intersection, 1e-12)


def _match(score: np.ndarray, minimum: float) -> list[tuple[int, int]]:
    """Optimal one-to-one pairs (row, col) of `score` [N, M]; pairs scoring below `minimum` never match.

    The most pairs that reach `minimum`, and among those the largest total score.
    """
    if score.size == 0:
        return []
    allowed = score >= minimum
    rows, cols = linear_sum_assignment(np.where(allowed, score, _FORBIDDEN), maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]


@dataclass
class FaceAssignment:
    """Which detected face shows which reference person, in one frame."""

    person_of_face: np.ndarray  # [F] int64 matched person index, -1 when the face matches nobody
    face_of_person: np.ndarray  # [P] int64 matched face index, -1 when the person is missing
    similarity: np.ndarray  # [F, P] float64 cosine similarity of every face to every reference


def match_faces(
    face_embeddings: np.ndarray,
    reference_embeddings: np.ndarray,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
) -> FaceAssignment:
    """face_embeddings [F, D], reference_embeddings [P, D] -> optimal face-to-person assignment.

    F and P may differ: people may be missing (F < P) and extra faces present (F > P). A pair
    below `min_similarity` never counts as a match.
    """
    references = _check_embeddings(reference_embeddings, "reference_embeddings")
    faces = _check_embeddings(face_embeddings, "face_embeddings", like=(references, "reference_embeddings"))
    similarity = cosine_similarity_matrix(faces, references)
    person_of_face = np.full(len(faces), -1, dtype=np.int64)
    face_of_person = np.full(len(references), -1, dtype=np.int64)
    for face, person in _match(similarity, min_similarity):
        person_of_face[face] = person
        face_of_person[person] = face
    return FaceAssignment(person_of_face, face_of_person, similarity)


@dataclass
class IdentityMetrics:
    """How well a clip keeps each of P reference people, over T frames."""

    per_person_similarity: np.ndarray  # [P] float64 mean cosine to the reference over frames where matched; 0 if never
    mean: float  # mean of per_person_similarity over the people
    worst_person: float  # min of per_person_similarity: the person the clip keeps worst
    missing_fraction: np.ndarray  # [P] float64 fraction of frames in which the person is not matched
    swaps: int  # identity-change events along face tracks between consecutive frames (see _count_swaps)
    temporal_consistency: float  # mean over people of their matched faces' consecutive-frame cosine; nan if none
    assignments: list[np.ndarray]  # T x [F_t] int64 person index of each face, -1 when unmatched


def identity_metrics(
    per_frame_face_embeddings: list[np.ndarray],
    reference_embeddings: np.ndarray,
    face_boxes: list[np.ndarray] | None = None,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    link_iou: float = DEFAULT_LINK_IOU,
    link_similarity: float = DEFAULT_LINK_SIMILARITY,
) -> IdentityMetrics:
    """T frames of face embeddings [F_t, D] + references [P, D] (+ boxes [F_t, 4]) -> IdentityMetrics.

    Faces are linked into tracks between consecutive frames by box overlap (IoU >= link_iou)
    when boxes are given, else by embedding similarity (>= link_similarity). Only boxes can
    reveal two people trading faces in place: linked by embedding, each face simply follows
    its own likeness; embedding links still catch a face that drifts from one person to another.
    """
    references = _check_embeddings(reference_embeddings, "reference_embeddings")
    if len(references) == 0:
        raise ValueError("identity_metrics: reference_embeddings is empty (need at least one person)")
    frames = [
        _check_embeddings(e, f"per_frame_face_embeddings[{t}]", like=(references, "reference_embeddings"))
        for t, e in enumerate(per_frame_face_embeddings)
    ]
    if not frames:
        raise ValueError("identity_metrics: per_frame_face_embeddings is empty (need at least one frame)")
    boxes = None if face_boxes is None else _check_boxes(face_boxes, frames)
    assignments = [match_faces(e, references, min_similarity) for e in frames]
    num_people = len(references)

    similarity_sum = np.zeros(num_people)
    present_count = np.zeros(num_people)
    for a in assignments:
        present = np.flatnonzero(a.face_of_person >= 0)
        similarity_sum[present] += a.similarity[a.face_of_person[present], present]
        present_count[present] += 1
    per_person = np.where(present_count > 0, similarity_sum / np.maximum(present_count, 1), 0.0)

    swaps = 0
    for t in range(len(frames) - 1):
        if boxes is not None:
            links = _match(box_iou(boxes[t], boxes[t + 1]), link_iou)
        else:
            links = _match(cosine_similarity_matrix(frames[t], frames[t + 1]), link_similarity)
        before, after = assignments[t].person_of_face, assignments[t + 1].person_of_face
        changes = [
            (int(before[i]), int(after[j]))
            for i, j in links
            if before[i] >= 0 and after[j] >= 0 and before[i] != after[j]
        ]
        swaps += _count_swaps(changes)

    return IdentityMetrics(
        per_person_similarity=per_person,
        mean=float(per_person.mean()),
        worst_person=float(per_person.min()),
        missing_fraction=1.0 - present_count / len(frames),
        swaps=swaps,
        temporal_consistency=_temporal_consistency(frames, assignments, num_people),
        assignments=[a.person_of_face for a in assignments],
    )


def _count_swaps(changes: list[tuple[int, int]]) -> int:
    """Label changes (old person, new person) at one frame transition -> number of swap events.

    Changes that share people form one event: two people trading faces changes two tracks
    (A->B and B->A) but is one swap; so is a three-way rotation; a single face turning into
    another person is one event too.
    """
    parent: dict[int, int] = {}

    def root(person: int) -> int:
        while parent.setdefault(person, person) != person:
            person = parent[person]
        return person

    for old, new in changes:
        parent[root(old)] = root(new)
    return len({root(old) for old, _ in changes})


def _temporal_consistency(frames: list[np.ndarray], assignments: list[FaceAssignment], num_people: int) -> float:
    """Mean over people of the cosine between their matched faces in consecutive frames (both present)."""
    per_person = []
    for person in range(num_people):
        cosines = []
        for t in range(len(frames) - 1):
            i = assignments[t].face_of_person[person]
            j = assignments[t + 1].face_of_person[person]
            if i >= 0 and j >= 0:
                cosines.append(float(unit_rows(frames[t][i]) @ unit_rows(frames[t + 1][j])))
        if cosines:
            per_person.append(np.mean(cosines))
    return float(np.mean(per_person)) if per_person else float("nan")


def largest_face_similarity(per_frame_face_embeddings: list[np.ndarray], face_boxes: list[np.ndarray],
                            reference_embeddings: np.ndarray) -> float:
    """OpenS2V-Eval's FaceSim protocol: in each frame the largest face (by box area), its cosine to
    the reference (with several references, to the one it resembles most); the mean over frames, a
    frame without a face counting 0. T frames of [F_t, D] embeddings and [F_t, 4] boxes, references [P, D]."""
    references = _check_embeddings(reference_embeddings, "reference_embeddings")
    if len(references) == 0 or not per_frame_face_embeddings:
        raise ValueError("largest_face_similarity: needs at least one reference and one frame")
    frames = [_check_embeddings(e, f"per_frame_face_embeddings[{t}]", like=(references, "reference_embeddings"))
              for t, e in enumerate(per_frame_face_embeddings)]
    boxes = _check_boxes(face_boxes, frames)
    scores = []
    for faces, b in zip(frames, boxes):
        if len(faces) == 0:
            scores.append(0.0)
            continue
        largest = int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
        scores.append(float(cosine_similarity_matrix(faces[largest : largest + 1], references).max()))
    return float(np.mean(scores))


def pool_similarity(face_embeddings: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """face_embeddings [N, D], pool [M, D] -> [N] mean cosine of each face to every pool embedding."""
    faces = _check_embeddings(face_embeddings, "face_embeddings")
    pool = _check_embeddings(pool, "pool", like=(faces, "face_embeddings"))
    if len(pool) == 0:
        raise ValueError("pool_similarity: pool is empty (need at least one embedding)")
    return cosine_similarity_matrix(faces, pool).mean(axis=1)


def _check_embeddings(x: np.ndarray, name: str, like: tuple[np.ndarray, str] | None = None) -> np.ndarray:
    """-> float64 [N, D]; with `like` = (other array, its name), D must match the other's."""
    x = np.asarray(x, dtype=np.float64)
    if like is not None and x.size == 0:
        return x.reshape(0, like[0].shape[1])  # a frame without faces may come as any empty array
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array [N, D] of embeddings, got shape {x.shape}")
    if like is not None and x.shape[1] != like[0].shape[1]:
        raise ValueError(f"{name}: embeddings are {x.shape[1]}-d but {like[1]} are {like[0].shape[1]}-d")
    return x


def _check_boxes(face_boxes: list[np.ndarray], frames: list[np.ndarray]) -> list[np.ndarray]:
    if len(face_boxes) != len(frames):
        raise ValueError(
            f"face_boxes: {len(face_boxes)} frames of boxes for {len(frames)} frames of embeddings"
        )
    boxes = []
    for t, (b, e) in enumerate(zip(face_boxes, frames)):
        b = np.asarray(b, dtype=np.float64)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.shape != (len(e), 4):
            raise ValueError(f"face_boxes[{t}]: expected shape ({len(e)}, 4) to match the embeddings, got {b.shape}")
        boxes.append(b)
    return boxes
