"""Face-similarity rewards: how much each person's generated face looks like them (ArcFace cosine).

    face_similarity        cosine of each person's face to their reference image
    face_pool_similarity   mean cosine of each person's face to a pool of their faces (IPRO's facial score)

Per clip, faces are detected in every frame and embedded (insightface, identity_grpo.faces.analyzer).
Each frame's faces are matched to the reference people by the optimal (Hungarian) assignment
on cosine to the references (identity_grpo.faces.identity_metrics.match_faces), so a face is credited
to the person it shows rather than to whoever it resembles most on its own. A person's score in
a frame is their matched face's similarity, 0 when they are missing (a stranger's level, so
dropping a person never pays); per person the mean over frames; per clip the mean over people
(`aggregate: mean`) or the worst-kept person's score (`aggregate: worst`).

The pool variant scores a matched face by its mean cosine to many views of the person rather
than to one image, so the generator cannot win by copying the reference's pose and light
(IPRO). The views come from the prompt manifest: a row's `pool_paths` lists, per person, images
or videos of them (identity_grpo/faces/pool_files.py); the reward takes the batch's prompt records.

Options (rewards[i].options):
    faces: {pack, root, providers, det_size, det_thresh, max_faces, batch_size}
           the insightface models (identity_grpo.faces.analyzer.FaceAnalyzerConfig; root holds models/<pack>/)
    aggregate: mean | worst                    over the people of a clip (default mean)
    min_similarity: a face matches a person only at this cosine or more (default 0.2)
    pool_frames (pool only): frames taken uniformly from each pool video (default 16)
    pool_root (pool only): folder that relative pool_paths are resolved against (default: working directory)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from identity_grpo.faces.pool_files import FacePools
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.rewards.spec import RewardFn, RewardKind, RewardSpec
from identity_grpo.core.config_io import ConfigError, from_dict
from identity_grpo.faces.analyzer import FaceAnalyzer, FaceAnalyzerConfig, FaceNotFound, stack_faces
from identity_grpo.faces.identity_metrics import DEFAULT_MIN_SIMILARITY, match_faces, pool_similarity

AGGREGATES = ("mean", "worst")


def person_frame_scores(
    frame_faces: Sequence[np.ndarray],
    references: np.ndarray,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    pools: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """T frames of face embeddings [F_t, D] + references [P, D] -> [T, P] each person's score per frame.

    The score is the matched face's cosine to the person's reference or, with pools (P x [M_p, D]),
    its mean cosine to the person's pool; 0 where the person is matched to no face.
    """
    scores = np.zeros((len(frame_faces), len(references)))
    for t, faces in enumerate(frame_faces):
        assignment = match_faces(faces, references, min_similarity)
        for person, face in enumerate(assignment.face_of_person):
            if face < 0:
                continue
            if pools is None:
                scores[t, person] = assignment.similarity[face, person]
            else:
                scores[t, person] = pool_similarity(faces[face][None], pools[person])[0]
    return scores


def clip_score(scores: np.ndarray, aggregate: str) -> float:
    """[T, P] per-frame person scores -> the clip's reward: mean over frames, then mean or min over people."""
    per_person = scores.mean(axis=0)
    return float(per_person.min() if aggregate == "worst" else per_person.mean())


class FaceSimilarityReward:
    """face_similarity as a RewardFn (see the module doc)."""

    name = "face_similarity"

    def __init__(self, analyzer: FaceAnalyzer, aggregate: str = "mean", min_similarity: float = DEFAULT_MIN_SIMILARITY):
        if aggregate not in AGGREGATES:
            raise ValueError(f"{self.name}: aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        self.analyzer = analyzer
        self.aggregate = aggregate
        self.min_similarity = min_similarity
        self._references: dict[bytes, np.ndarray] = {}  # image digest -> [D]: a group shares its references

    def __call__(self, videos: torch.Tensor, references: Sequence[Sequence[np.ndarray]], prompts: Sequence[str]):
        """videos [B, T, H, W, 3] in [0, 1] -> [B] float32."""
        rewards = [
            clip_score(person_frame_scores(self.clip_faces(video), self.reference_embeddings(refs, b),
                                           self.min_similarity), self.aggregate)
            for b, (video, refs) in enumerate(zip(videos, references))
        ]
        return torch.tensor(rewards, dtype=torch.float32)

    def clip_faces(self, video: torch.Tensor) -> list[np.ndarray]:
        """One clip [T, H, W, 3] in [0, 1] -> per frame the embeddings [F_t, D] of the faces found."""
        frames = (video.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return stack_faces(self.analyzer.detect(frames), self.analyzer.embedding_dim)[0]

    def reference_embeddings(self, images: Sequence[np.ndarray], clip: int) -> np.ndarray:
        """One clip's reference images uint8 [h, w, 3] -> [P, D], each embedded once per reward."""
        if not images:
            raise ValueError(f"{self.name}: clip {clip} has no reference images (one per person is needed)")
        embeddings = []
        for image in images:
            image = np.ascontiguousarray(image)
            key = hashlib.sha1(image.tobytes() + str(image.shape).encode()).digest()
            if key not in self._references:
                try:
                    self._references[key] = self.analyzer.embed_references([image])[0]
                except FaceNotFound as error:
                    raise FaceNotFound(f"{self.name}: clip {clip}: {error}") from None
            embeddings.append(self._references[key])
        return np.stack(embeddings)


class FacePoolReward(FaceSimilarityReward):
    """face_pool_similarity as a RewardFn: takes the batch's prompt records for their `pool_paths`."""

    name = "face_pool_similarity"

    def __init__(self, analyzer: FaceAnalyzer, pools: FacePools, aggregate: str = "mean",
                 min_similarity: float = DEFAULT_MIN_SIMILARITY):
        super().__init__(analyzer, aggregate, min_similarity)
        self.pools = pools

    def __call__(self, videos: torch.Tensor, references: Sequence[Sequence[np.ndarray]], prompts: Sequence[str],
                 records: Sequence[PromptRecord] | None = None):
        if records is None or len(records) != len(videos):
            got = "none" if records is None else len(records)
            raise ValueError(f"{self.name}: needs the batch's {len(videos)} prompt records (records=...), got {got}")
        rewards = []
        for b, (video, refs, record) in enumerate(zip(videos, references, records)):
            reference_embeddings = self.reference_embeddings(refs, b)
            try:
                pools = self.pools.pools(record.extra.get("pool_paths"), reference_embeddings, self.min_similarity)
            except ValueError as error:
                raise ValueError(f"{self.name}: prompt {record.prompt!r}: {error}") from None
            scores = person_frame_scores(self.clip_faces(video), reference_embeddings, self.min_similarity, pools)
            rewards.append(clip_score(scores, self.aggregate))
        return torch.tensor(rewards, dtype=torch.float32)


@dataclass
class FaceRewardOptions:
    faces: FaceAnalyzerConfig  # the insightface pack and how to run it
    aggregate: str = "mean"  # over the people of a clip: mean | worst
    min_similarity: float = DEFAULT_MIN_SIMILARITY  # a face counts as a person only from this cosine on
    pool_frames: int = 16  # face_pool_similarity: frames read from each pool video
    pool_root: str = ""  # face_pool_similarity: relative pool paths are resolved against it


def parse_options(spec: RewardSpec, pool: bool) -> FaceRewardOptions:
    """spec.options -> FaceRewardOptions; ConfigError("options.<key>: ...") on the first bad value."""
    if spec.path:
        raise ConfigError(f"path: face rewards find their models through options.faces.root; got path {spec.path!r}")
    options: Mapping = spec.options
    known = ["faces", "aggregate", "min_similarity"] + (["pool_frames", "pool_root"] if pool else [])
    for key in options:
        if key not in known:
            raise ConfigError(f"options.{key}: unknown option for {spec.name} (known: {', '.join(known)})")
    faces = from_dict(FaceAnalyzerConfig, options.get("faces") or {}, source="options.faces")
    try:
        faces.validate()
    except ConfigError as error:
        raise ConfigError(f"options.{error}") from None
    parsed = FaceRewardOptions(faces, **{k: v for k, v in options.items() if k != "faces"})
    if parsed.aggregate not in AGGREGATES:
        raise ConfigError(f"options.aggregate: must be one of {', '.join(AGGREGATES)}, got {parsed.aggregate!r}")
    if isinstance(parsed.min_similarity, bool) or not isinstance(parsed.min_similarity, (int, float)) \
            or not -1.0 <= parsed.min_similarity <= 1.0:
        raise ConfigError(f"options.min_similarity: must be a cosine in [-1, 1], got {parsed.min_similarity!r}")
    if isinstance(parsed.pool_frames, bool) or not isinstance(parsed.pool_frames, int) or parsed.pool_frames < 1:
        raise ConfigError(f"options.pool_frames: must be an integer >= 1, got {parsed.pool_frames!r}")
    if not isinstance(parsed.pool_root, str):
        raise ConfigError(f"options.pool_root: must be a folder path, got {parsed.pool_root!r}")
    return parsed


# The face models run where onnxruntime's providers put them (options.faces.providers; default CUDA
# when onnxruntime has it), not on the trainer's `device`.
def build_face_similarity(spec: RewardSpec, device: torch.device) -> RewardFn:
    options = parse_options(spec, pool=False)
    return FaceSimilarityReward(FaceAnalyzer(options.faces), options.aggregate, float(options.min_similarity))


def build_face_pool_similarity(spec: RewardSpec, device: torch.device) -> RewardFn:
    options = parse_options(spec, pool=True)
    analyzer = FaceAnalyzer(options.faces)
    pools = FacePools(analyzer, options.pool_frames, options.pool_root)
    return FacePoolReward(analyzer, pools, options.aggregate, float(options.min_similarity))


FACE_SIMILARITY = RewardKind(build_face_similarity, lambda spec: parse_options(spec, pool=False))
FACE_POOL_SIMILARITY = RewardKind(build_face_pool_similarity, lambda spec: parse_options(spec, pool=True))
