"""The reward IPRO backpropagates: the synthetic world's face models (world/face_models.py), or on
real videos ArcFace: insightface's detector finds faces and their five landmarks
(no gradient), a PyTorch ArcFace (iresnet, public arcface_torch weights) embeds ArcFace-aligned
crops with gradients, and each prompt's pool comes from the files its manifest row lists under
`pool_paths` (per person: the ground-truth video, or several photos), read by GRPO's FacePools.

Pools and generated faces must live in one embedding space, so FacePools is handed
`RecognizerFaces`: insightface's detections with their embeddings replaced by the iresnet's.
(insightface's own ONNX recognizer still runs inside FaceAnalyzer.detect; its output is unused.)
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from identity_grpo.faces.pool_files import FacePools
from identity_grpo.finetune.evaluation import EvalBatch, EvaluateFn
from identity_grpo.ipro.config import ArcFaceRewardSettings, FaceRewardConfig
from identity_grpo.faces.crop import align_faces
from identity_grpo.faces.differentiable_reward import DifferentiableFaceReward
from identity_grpo.faces.pool_reward import Detections, FacePool
from identity_grpo.faces.iresnet import IResNet, load_arcface
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.faces.analyzer import Face, FaceAnalyzer, FaceNotFound


class RecognizerFaces:
    """identity_grpo.faces.analyzer.FaceAnalyzer's detections, embedded by a PyTorch ArcFace."""

    def __init__(self, analyzer: FaceAnalyzer, recognizer: IResNet) -> None:
        self.analyzer = analyzer
        self.recognizer = recognizer
        self.embedding_dim = recognizer.config.embedding_dim

    @torch.no_grad()
    def detect(self, frames: np.ndarray) -> list[list[Face]]:
        """uint8 [T, H, W, 3] RGB -> per frame its faces, embeddings from the iresnet."""
        found = self.analyzer.detect(frames)
        faces = [(t, face) for t, per_frame in enumerate(found) for face in per_frame]
        if not faces:
            return found
        embeddings = self.embed(frames, [t for t, _ in faces], np.stack([f.landmarks for _, f in faces]))
        for (_, face), embedding in zip(faces, embeddings):
            face.embedding = embedding
        return found

    def embed(self, frames: np.ndarray, which: Sequence[int], landmarks: np.ndarray) -> np.ndarray:
        """Faces of frames[which[i]] at landmarks [N, 5, 2] -> [N, D] unit embeddings."""
        device = next(self.recognizer.parameters()).device
        pixels = torch.from_numpy(np.ascontiguousarray(frames[list(which)])).to(device).permute(0, 3, 1, 2).float() / 255
        crops = align_faces(pixels, torch.from_numpy(landmarks).to(device), self.recognizer.input_size)
        return self.recognizer.embed(crops).cpu().numpy()

    def embed_references(self, images: Sequence[np.ndarray], prompt: str) -> np.ndarray:
        """One reference image per person -> [P, D], the largest face of each."""
        embeddings = []
        for index, image in enumerate(images):
            faces = self.analyzer.detect(image[None])[0]
            if not faces:
                raise FaceNotFound(f"face reward: prompt {prompt[:40]!r}...: no face in reference {index}")
            largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            embeddings.append(self.embed(image[None], [0], largest.landmarks[None])[0])
        return np.stack(embeddings)


def detections(analyzer: FaceAnalyzer, frames: torch.Tensor, max_faces: int) -> list[Detections]:
    """frames [N, 3, H, W] in [0, 1] -> per frame the max_faces most confident faces, with landmarks."""
    pixels = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    found = []
    for per_frame in analyzer.detect(pixels):
        kept = sorted(per_frame, key=lambda f: -f.score)[:max_faces]
        boxes = torch.tensor(np.array([f.box for f in kept], dtype=np.float32).reshape(-1, 4))
        landmarks = torch.tensor(np.array([f.landmarks for f in kept], dtype=np.float32).reshape(-1, 5, 2))
        found.append(Detections(boxes, landmarks))
    return found


def pool_from_manifest(faces: RecognizerFaces, pools: FacePools, record: PromptRecord, min_similarity: float) -> FacePool:
    """Each person's faces in the files of the row's `pool_paths`, matched against the references."""
    if "pool_paths" not in record.extra:
        raise ValueError(f"face reward: prompt {record.prompt[:40]!r}... has no 'pool_paths': IPRO scores faces "
                         "against a pool of each person's faces (ground-truth video frames or several photos); "
                         "with a single reference the reward is hacked")
    references = faces.embed_references(record.load_references(), record.prompt)
    try:
        per_person = pools.pools(record.extra["pool_paths"], references, min_similarity)
    except ValueError as error:
        raise ValueError(f"face reward: prompt {record.prompt[:40]!r}...: {error}") from None
    return FacePool([torch.from_numpy(p).float() for p in per_person])


def arcface_face_reward(settings: ArcFaceRewardSettings, device: torch.device | str = "cpu") -> DifferentiableFaceReward:
    recognizer = load_arcface(settings.recognizer, settings.arch).to(device)
    analyzer = FaceAnalyzer(settings.faces)
    faces = RecognizerFaces(analyzer, recognizer)
    pools = FacePools(faces, settings.pool_frames, settings.pool_root)
    return DifferentiableFaceReward(
        recognizer,
        lambda frames, max_faces: detections(analyzer, frames, max_faces),
        lambda record: pool_from_manifest(faces, pools, record, settings.min_similarity),
        min_similarity=settings.min_similarity,
    )


FaceReward = Callable[[torch.Tensor, Sequence[PromptRecord]], torch.Tensor]  # videos, records -> [B] with gradients


def build_face_reward(cfg: FaceRewardConfig, device: torch.device | str = "cpu") -> FaceReward:
    """The configured differentiable face reward: the synthetic world's face models or ArcFace."""
    if cfg.kind == "world":
        from identity_grpo.world.face_models import world_face_reward  # trains on first use

        return world_face_reward(cfg.world, device)
    return arcface_face_reward(cfg.arcface, device)


def with_face_reward(face_reward: FaceReward, hook: EvaluateFn | None) -> EvaluateFn:
    """The evaluation hook: the training reward as eval/face_reward, then the caller's metrics."""
    def metrics(batch: EvalBatch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            values = {"face_reward": face_reward(batch.videos.float(), batch.records).detach().cpu()}
        if hook is not None:
            values.update(hook(batch))
        return values

    return metrics
