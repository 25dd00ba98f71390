"""Face metrics of generated clips: insightface detection + ArcFace embeddings (identity_grpo.faces.analyzer),
optionally CurricularFace embeddings of the same aligned crops (identity_grpo.faces.curricularface),
each under two protocols:

    per-person matched (ours)   every frame's faces matched to the reference people (Hungarian,
                                identity_grpo.faces.identity_metrics): face_similarity (mean over
                                people), face_worst (the worst person), face_swaps, face_missing;
                                with CurricularFace also face_similarity_cur, face_worst_cur
    largest face (OpenS2V-Eval) the largest face per frame, cosine to the reference (the closest
                                of several), mean over frames, a frame without a face 0:
                                facesim_arc (ArcFace of the pack, antelopev2 in OpenS2V-Eval) and
                                facesim_cur (CurricularFace IR-101), comparable with its FaceSim-Arc
                                and FaceSim-Cur
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.faces.analyzer import FaceAnalyzer, FaceNotFound, stack_faces
from identity_grpo.faces.curricularface import IRNet
from identity_grpo.faces.identity_metrics import identity_metrics, largest_face_similarity

FACE_METRICS = ("face_similarity", "face_worst", "face_swaps", "face_missing", "facesim_arc")
CURRICULAR_METRICS = ("facesim_cur", "face_similarity_cur", "face_worst_cur")


def curricular_embeddings(model: IRNet, crops: Sequence[np.ndarray], bgr_input: bool = False) -> np.ndarray:
    """Aligned BGR uint8 crops [S, S, 3] (insightface's) -> [N, D] unit CurricularFace embeddings.
    bgr_input: feed the channels as BGR (as the crops come) instead of RGB."""
    dim = model.layout.embedding_dim
    if not crops:
        return np.zeros((0, dim), np.float32)
    pixels = torch.from_numpy(np.stack(crops)).float().div(255.0)  # [N, S, S, 3] BGR
    if not bgr_input:
        pixels = pixels.flip(-1)
    pixels = pixels.permute(0, 3, 1, 2)
    size = model.layout.input_size
    if pixels.shape[-1] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    device = next(model.parameters()).device
    return model.embed(pixels.to(device)).cpu().numpy()


class FaceScorer:
    """Scores clips against their records' reference images; reference embeddings are computed once per record."""

    def __init__(self, analyzer: FaceAnalyzer, curricular: IRNet | None = None, curricular_bgr: bool = False):
        self.analyzer, self.curricular, self.curricular_bgr = analyzer, curricular, curricular_bgr
        self._references: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray | None]] = {}

    @property
    def metrics(self) -> tuple[str, ...]:
        return FACE_METRICS + (CURRICULAR_METRICS if self.curricular is not None else ())

    def reference_embeddings(self, record: PromptRecord) -> tuple[np.ndarray, np.ndarray | None]:
        """([P, D] ArcFace, [P, D'] CurricularFace or None): one per reference image (its largest face)."""
        key = tuple(str(p) for p in record.references)
        if key not in self._references:
            try:
                crops = self.analyzer.reference_crops(list(record.references))
            except FaceNotFound as error:
                raise FaceNotFound(f"prompt {record.prompt[:50]!r}: {error}") from None
            cur = curricular_embeddings(self.curricular, crops, self.curricular_bgr) if self.curricular else None
            self._references[key] = (self.analyzer.embed_references(list(record.references)), cur)
        return self._references[key]

    def __call__(self, frames: np.ndarray, records: Sequence[PromptRecord]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """frames uint8 [B, T, H, W, 3] -> ({metric: [B]}, B per-person ArcFace similarities [P_b])."""
        values = {name: [] for name in self.metrics}
        per_person = []
        for clip, record in zip(frames, records):
            faces = self.analyzer.detect(clip)
            embeddings, boxes = stack_faces(faces, self.analyzer.embedding_dim)
            arc_refs, cur_refs = self.reference_embeddings(record)
            metrics = identity_metrics(embeddings, arc_refs, face_boxes=boxes)
            values["face_similarity"].append(metrics.mean)
            values["face_worst"].append(metrics.worst_person)
            values["face_swaps"].append(float(metrics.swaps))
            values["face_missing"].append(float(metrics.missing_fraction.mean()))
            values["facesim_arc"].append(largest_face_similarity(embeddings, boxes, arc_refs))
            per_person.append(metrics.per_person_similarity.astype(np.float64))
            if self.curricular is not None:
                cur = [curricular_embeddings(self.curricular, [f.crop for f in frame], self.curricular_bgr)
                       for frame in faces]
                matched = identity_metrics(cur, cur_refs, face_boxes=boxes)
                values["facesim_cur"].append(largest_face_similarity(cur, boxes, cur_refs))
                values["face_similarity_cur"].append(matched.mean)
                values["face_worst_cur"].append(matched.worst_person)
        return {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}, per_person
