"""IPRO's differentiable face-identity reward, for clips with several people.

Each person p of a clip has a *pool* of face embeddings: their face in every frame of a
ground-truth video, or several reference views. A generated face scores its mean cosine to the
whole pool (IPRO: one reference image alone lets the generator copy that image's pose and light,
and the score gets hacked). The reward of a video is that score averaged over frames and people:

    reward_b = 1/P_b sum_p 1/T sum_t [face of p found in frame t] * mean_m cos(e_btp, pool_pm)

A frame where a person's face is missing counts 0, the level of a stranger, so dropping a person
never raises the reward. Where the faces are (boxes, landmarks) and who they are (the assignment
to people) is decided without gradients; the crops and the frozen recognizer carry gradients from
the reward back to the video's pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from identity_grpo.faces.crop import ARCFACE_TEMPLATE_112, align_faces, crop_faces
from identity_grpo.faces.iresnet import IResNet
from identity_grpo.faces.identity_metrics import DEFAULT_MIN_SIMILARITY, match_faces


@dataclass
class FacePool:
    """The face embeddings every generated face of each person is compared with (one clip's people)."""

    embeddings: list[torch.Tensor]  # P x [M_p, D] float32 face embeddings of person p (made unit-length when used)

    def __post_init__(self) -> None:
        if not self.embeddings:
            raise ValueError("FacePool.embeddings: no people (need at least one [M_p, D] tensor)")
        dim = self.embeddings[0].shape[-1]
        for person, pool in enumerate(self.embeddings):
            if pool.ndim != 2 or len(pool) == 0 or pool.shape[1] != dim:
                raise ValueError(
                    f"FacePool.embeddings[{person}]: expected a non-empty [M, {dim}] tensor, got {tuple(pool.shape)}"
                )

    @property
    def num_people(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings[0].shape[1])

    def mean_embeddings(self) -> torch.Tensor:
        """[P, D] mean of each person's unit-length pool embeddings: for a unit face e, e . mean is e's mean cosine."""
        return torch.stack([F.normalize(pool.float(), dim=-1).mean(dim=0) for pool in self.embeddings])


@dataclass
class FaceLocations:
    """Where each person's face is in each frame of a batch of videos (found without gradients)."""

    boxes: torch.Tensor  # [B, T, P, 4] float x0, y0, x1, y1 frame pixels of person p's face; any value where absent
    present: torch.Tensor  # [B, T, P] bool, person p's face was found in frame t of video b
    landmarks: torch.Tensor | None = None  # [B, T, P, 5, 2] float (x, y) eyes, nose, mouth corners; given: ArcFace-aligned crops instead of box crops

    def __post_init__(self) -> None:
        if self.boxes.ndim != 4 or self.boxes.shape[-1] != 4:
            raise ValueError(f"FaceLocations.boxes: expected [B, T, P, 4], got {tuple(self.boxes.shape)}")
        if self.present.shape != self.boxes.shape[:3] or self.present.dtype != torch.bool:
            raise ValueError(
                f"FaceLocations.present: expected bool {tuple(self.boxes.shape[:3])}, "
                f"got {self.present.dtype} {tuple(self.present.shape)}"
            )
        if self.landmarks is not None and self.landmarks.shape != (*self.boxes.shape[:3], 5, 2):
            raise ValueError(
                f"FaceLocations.landmarks: expected {(*self.boxes.shape[:3], 5, 2)}, got {tuple(self.landmarks.shape)}"
            )


@dataclass
class Detections:
    """A detector's faces in one frame, in no particular order."""

    boxes: torch.Tensor  # [F, 4] float x0, y0, x1, y1 frame pixels
    landmarks: torch.Tensor | None = None  # [F, 5, 2] float (x, y)


def pool_reward(face_embeddings: torch.Tensor, present: torch.Tensor, pools: Sequence[FacePool]) -> torch.Tensor:
    """face_embeddings [B, T, P, D], present [B, T, P] bool, one pool per video -> reward [B] (see the module doc).

    Slots p >= pools[b].num_people are padding and must not be present.
    """
    batch, _, slots, dim = face_embeddings.shape
    if present.shape != face_embeddings.shape[:3]:
        raise ValueError(f"pool_reward: present must be {tuple(face_embeddings.shape[:3])}, got {tuple(present.shape)}")
    if len(pools) != batch:
        raise ValueError(f"pool_reward: {len(pools)} pools for {batch} videos")
    means = torch.zeros(batch, slots, dim, device=face_embeddings.device)
    for b, pool in enumerate(pools):
        if pool.dim != dim or pool.num_people > slots:
            raise ValueError(
                f"pool_reward: pools[{b}] has {pool.num_people} people of {pool.dim}-d embeddings; "
                f"the faces have {slots} slots of {dim}-d"
            )
        if present[b, :, pool.num_people :].any():
            raise ValueError(f"pool_reward: video {b} has faces in slots beyond its {pool.num_people} people")
        means[b, : pool.num_people] = pool.mean_embeddings().to(face_embeddings.device)
    similarity = (F.normalize(face_embeddings.float(), dim=-1) * means[:, None]).sum(dim=-1)  # [B, T, P]
    per_person = torch.where(present, similarity, torch.zeros_like(similarity)).mean(dim=1)  # [B, P]
    people = torch.tensor([pool.num_people for pool in pools], device=per_person.device)
    return per_person.sum(dim=1) / people


def identity_reward(
    recognizer: IResNet,
    videos: torch.Tensor,
    locations: FaceLocations,
    pools: Sequence[FacePool],
    margin: float = 0.0,
) -> torch.Tensor:
    """videos [B, T, 3, H, W] RGB in [0, 1] -> reward [B], differentiable w.r.t. the videos.

    `locations` gives each person's face per frame (see `assign_detections` when the detector's
    faces are not yet matched to people); `recognizer` must be frozen and in eval mode.
    """
    embeddings = _embed_located_faces(recognizer, videos, locations, margin)
    return pool_reward(embeddings, locations.present.to(embeddings.device), pools)


@torch.no_grad()
def build_pool(recognizer: IResNet, face_crops_per_person: Sequence[torch.Tensor]) -> FacePool:
    """P x [M_p, 3, S, S] face crops in [0, 1] (S = recognizer input size) -> FacePool of their embeddings."""
    _require_frozen(recognizer)
    return FacePool([recognizer.embed(crops) for crops in face_crops_per_person])


@torch.no_grad()
def pools_from_videos(
    recognizer: IResNet, videos: torch.Tensor, locations: FaceLocations, margin: float = 0.0
) -> list[FacePool]:
    """Ground-truth videos [B, T, 3, H, W] in [0, 1] -> one pool per video: each person's face in every frame found.

    Every person slot of `locations` is a person and must be present in at least one frame.
    """
    embeddings = _embed_located_faces(recognizer, videos, locations, margin)
    present = locations.present.to(embeddings.device)
    pools = []
    for b in range(len(videos)):
        people = []
        for p in range(present.shape[2]):
            if not present[b, :, p].any():
                raise ValueError(f"pools_from_videos: person {p} of video {b} is present in no frame")
            people.append(embeddings[b, present[b, :, p], p])
        pools.append(FacePool(people))
    return pools


@torch.no_grad()
def assign_detections(
    recognizer: IResNet,
    videos: torch.Tensor,
    detections: Sequence[Sequence[Detections]],
    pools: Sequence[FacePool],
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    margin: float = 0.0,
) -> FaceLocations:
    """Detected faces detections[b][t] -> FaceLocations with slot p holding person p of pools[b].

    Each frame's faces are matched to the people by the optimal (Hungarian) assignment of
    identity_grpo.faces.identity_metrics.match_faces, on cosine to each person's mean pool embedding;
    a person left unmatched (or below min_similarity) is absent from that frame.
    """
    batch, frames = videos.shape[:2]
    if len(detections) != batch or any(len(per_frame) != frames for per_frame in detections):
        raise ValueError(f"assign_detections: detections must be {batch} videos x {frames} frames of Detections")
    if len(pools) != batch:
        raise ValueError(f"assign_detections: {len(pools)} pools for {batch} videos")
    found = _pad_detections(detections, videos.device)
    embeddings = _embed_located_faces(recognizer, videos, found, margin).cpu().numpy()
    slots = max(pool.num_people for pool in pools)
    boxes = torch.zeros(batch, frames, slots, 4, device=videos.device)
    present = torch.zeros(batch, frames, slots, dtype=torch.bool, device=videos.device)
    landmarks = None if found.landmarks is None else torch.zeros(batch, frames, slots, 5, 2, device=videos.device)
    for b, pool in enumerate(pools):
        references = pool.mean_embeddings().cpu().numpy()
        for t in range(frames):
            faces = found.present[b, t].nonzero()[:, 0].cpu().numpy()
            assignment = match_faces(embeddings[b, t, faces], references, min_similarity)
            for person, face in enumerate(assignment.face_of_person):
                if face >= 0:
                    slot = int(faces[face])
                    boxes[b, t, person] = found.boxes[b, t, slot]
                    present[b, t, person] = True
                    if landmarks is not None:
                        landmarks[b, t, person] = found.landmarks[b, t, slot]
    return FaceLocations(boxes, present, landmarks)


def _pad_detections(detections: Sequence[Sequence[Detections]], device: torch.device) -> FaceLocations:
    """Ragged per-frame detections -> FaceLocations whose slots are detection indices (padding absent)."""
    frames = [d for per_frame in detections for d in per_frame]
    with_landmarks = {d.landmarks is not None for d in frames}
    if len(with_landmarks) > 1:
        raise ValueError("assign_detections: landmarks must be given for every frame's detections or for none")
    slots = max([len(d.boxes) for d in frames] + [1])
    batch, length = len(detections), len(detections[0])
    boxes = torch.zeros(batch, length, slots, 4, device=device)
    present = torch.zeros(batch, length, slots, dtype=torch.bool, device=device)
    landmarks = torch.zeros(batch, length, slots, 5, 2, device=device) if with_landmarks == {True} else None
    for b, per_frame in enumerate(detections):
        for t, d in enumerate(per_frame):
            count = len(d.boxes)
            if d.boxes.shape != (count, 4):
                raise ValueError(f"assign_detections: detections[{b}][{t}].boxes must be [F, 4], got {tuple(d.boxes.shape)}")
            boxes[b, t, :count] = d.boxes.to(device)
            present[b, t, :count] = True
            if landmarks is not None:
                if d.landmarks.shape != (count, 5, 2):
                    raise ValueError(
                        f"assign_detections: detections[{b}][{t}].landmarks must be [{count}, 5, 2], "
                        f"got {tuple(d.landmarks.shape)}"
                    )
                landmarks[b, t, :count] = d.landmarks.to(device)
    return FaceLocations(boxes, present, landmarks)


def _embed_located_faces(
    recognizer: IResNet, videos: torch.Tensor, locations: FaceLocations, margin: float
) -> torch.Tensor:
    """-> [B, T, P, D] embeddings of every present face, zeros where absent; differentiable w.r.t. videos.

    Crops go slot by slot over all B*T frames at once, so no frame is copied per face (a real
    clip is hundreds of 480x832 frames); crops of absent slots are cheap and dropped.
    """
    _require_frozen(recognizer)
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"identity reward: videos must be [B, T, 3, H, W] RGB, got {tuple(videos.shape)}")
    batch, length, _, height, width = videos.shape
    if locations.boxes.shape[:2] != (batch, length):
        raise ValueError(
            f"identity reward: locations are for {tuple(locations.boxes.shape[:2])} videos x frames, "
            f"the videos are {(batch, length)}"
        )
    frames = videos.flatten(0, 1)
    present = locations.present.flatten(0, 1).to(videos.device)  # [B*T, P]
    size = recognizer.input_size
    crops, where = [], []
    for slot in range(present.shape[1]):
        faces = present[:, slot].nonzero()[:, 0]
        if len(faces) == 0:
            continue
        here = present[:, slot, None]
        if locations.landmarks is None:
            # Absent slots get the whole frame: any finite box, so no NaN reaches grid_sample's backward.
            whole = torch.tensor([0.0, 0.0, width, height], device=videos.device)
            boxes = torch.where(here, locations.boxes.flatten(0, 1)[:, slot].to(videos.device), whole)
            slot_crops = crop_faces(frames, boxes, size, margin)
        else:
            template = torch.tensor(ARCFACE_TEMPLATE_112, device=videos.device)
            landmarks = locations.landmarks.flatten(0, 1)[:, slot].to(videos.device)
            slot_crops = align_faces(frames, torch.where(here[..., None], landmarks, template), size)
        crops.append(slot_crops[faces])
        where.append(torch.stack([faces, torch.full_like(faces, slot)], dim=-1))
    embeddings = torch.zeros(batch * length, present.shape[1], recognizer.config.embedding_dim, device=videos.device)
    if crops:
        index = torch.cat(where)
        embeddings = embeddings.index_put((index[:, 0], index[:, 1]), recognizer.embed(torch.cat(crops)).to(videos.device))
    return embeddings.unflatten(0, (batch, length))


def _require_frozen(recognizer: IResNet) -> None:
    # In training mode BatchNorm would normalise with the batch's own statistics, making one
    # face's score depend on the other faces in the batch.
    if recognizer.training:
        raise ValueError("identity reward: the recognizer is in training mode; call .eval() (load_arcface does)")
