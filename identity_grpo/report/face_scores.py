"""Face metrics of generated clips: insightface detection + ArcFace embeddings (identity_grpo.faces.analyzer),
matched to the reference people frame by frame (identity_grpo.faces.identity_metrics)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.faces.analyzer import FaceAnalyzer, FaceNotFound, stack_faces
from identity_grpo.faces.identity_metrics import identity_metrics

FACE_METRICS = ("face_similarity", "face_worst", "face_swaps", "face_missing")


class FaceScorer:
    """Scores clips against their records' reference images; reference embeddings are computed once per record."""

    def __init__(self, analyzer: FaceAnalyzer):
        self.analyzer = analyzer
        self._references: dict[tuple[str, ...], np.ndarray] = {}

    def reference_embeddings(self, record: PromptRecord) -> np.ndarray:
        """[P, D] one embedding per reference image (its largest face)."""
        key = tuple(str(p) for p in record.references)
        if key not in self._references:
            try:
                self._references[key] = self.analyzer.embed_references(list(record.references))
            except FaceNotFound as error:
                raise FaceNotFound(f"prompt {record.prompt[:50]!r}: {error}") from None
        return self._references[key]

    def __call__(self, frames: np.ndarray, records: Sequence[PromptRecord]) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """frames uint8 [B, T, H, W, 3] -> ({metric: [B]}, B per-person similarities [P_b])."""
        values = {name: [] for name in FACE_METRICS}
        per_person = []
        for clip, record in zip(frames, records):
            embeddings, boxes = stack_faces(self.analyzer.detect(clip), self.analyzer.embedding_dim)
            metrics = identity_metrics(embeddings, self.reference_embeddings(record), face_boxes=boxes)
            values["face_similarity"].append(metrics.mean)
            values["face_worst"].append(metrics.worst_person)
            values["face_swaps"].append(float(metrics.swaps))
            values["face_missing"].append(float(metrics.missing_fraction.mean()))
            per_person.append(metrics.per_person_similarity.astype(np.float64))
        return {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}, per_person
