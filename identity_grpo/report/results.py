"""What an evaluation produces: per model, every sample's scores and the clips kept for the grids.

Metric names (keys of `scores`; higher is better unless said):
- `reward`: the config's weighted total; `reward/<name>`: each configured reward (the stage-1
  model is `reward/reward_model`);
- `world_identity`, `world_identity_worst`: the synthetic world's independent measure, mean over
  the clip's people and its worst person (manifests with `identity_ids` only);
- `face_similarity`, `face_worst`: ArcFace cosine to the references, mean person and worst person;
  `face_swaps` (lower is better): identity changes along face tracks; `face_missing` (lower is
  better): fraction of frames a person is not found, mean over people (insightface only);
  `face_similarity_cur`, `face_worst_cur`: the same with CurricularFace embeddings (a backbone file given);
- `facesim_arc`, `facesim_cur`: OpenS2V-Eval's FaceSim-Arc / FaceSim-Cur protocol, the largest face
  per frame against the reference (report/face_scores.py).
Per-person measures (`per_person`): `world_identity`, `face_similarity`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LOWER_IS_BETTER = ("face_swaps", "face_missing")


@dataclass(frozen=True)
class SampleKey:
    """One evaluated sample: a prompt of the manifest and the seed of its initial noise. Every
    model gets the same noise for the same key, so models are compared on like samples."""

    prompt_index: int  # row of the evaluation manifest
    seed: int


@dataclass
class BatchScores:
    """Scores of B clips."""

    scores: dict[str, np.ndarray]  # metric -> [B] float64
    per_person: dict[str, list[np.ndarray]]  # measure -> B arrays [P_b] float64, people left to right


@dataclass
class ModelResult:
    """One model (the base, or the base + one LoRA) evaluated on `keys`."""

    name: str
    keys: list[SampleKey]
    scores: dict[str, np.ndarray]  # metric -> [N] float64, one value per key
    per_person: dict[str, list[np.ndarray]]  # measure -> N arrays [P_n] float64
    videos: dict[int, np.ndarray] = field(default_factory=dict)  # key position -> [T, H, W, 3] uint8 (kept ones only)
