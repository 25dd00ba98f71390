"""Everything a report measures on a batch of generated clips: the config's rewards, the synthetic
world's independent identity measure (when the manifest names the world's people), face metrics
(when an insightface pack is given; FaceSim-Cur with a CurricularFace backbone file)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from identity_grpo.core.config_io import ConfigError
from identity_grpo.faces.curricularface import load_curricularface
from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.report.face_scores import FaceScorer
from identity_grpo.report.results import BatchScores
from identity_grpo.report.samples import to_uint8
from identity_grpo.rewards.registry import RewardFn, WeightedRewards
from identity_grpo.world.prompt_manifests import per_person_scores, world_identity_scores
from identity_grpo.faces.analyzer import FaceAnalyzer, FaceAnalyzerConfig


def has_world_identities(records: Sequence[PromptRecord], manifest: str = "the evaluation manifest") -> bool:
    """True when every row names its world people (`identity_ids`), False when none does."""
    flags = ["identity_ids" in r.extra for r in records]
    if any(flags) and not all(flags):
        row = flags.index(False) + 1
        raise ValueError(f"{manifest}: row {row} has no 'identity_ids' while other rows do (all or none)")
    return all(flags) and bool(flags)


class Scorers:
    """A callable (videos [B, T, H, W, 3] float in [0, 1], records, references) -> BatchScores."""

    def __init__(self, rewards: WeightedRewards, world: bool = False, faces: FaceScorer | None = None):
        self.rewards, self.world, self.faces = rewards, world, faces

    @classmethod
    def from_config(cls, cfg: GrpoConfig, records: Sequence[PromptRecord], device: torch.device | str = "cpu",
                    faces: FaceAnalyzerConfig | None = None, reward_fns: Mapping[str, RewardFn] | None = None,
                    manifest: str = "", curricularface: str = "", curricularface_bgr: bool = False) -> "Scorers":
        """The config's rewards (or the ready `reward_fns`, weighted by the config), the world measure
        if the records carry identity_ids, face metrics if `faces` names an insightface pack (with
        `curricularface`, a CurricularFace backbone .pth, also FaceSim-Cur: report/face_scores.py)."""
        if curricularface and faces is None:
            raise ConfigError("curricularface: needs an insightface pack (faces) to detect and align the faces it embeds")
        curricular = load_curricularface(curricularface).to(device) if curricularface else None  # before any model
        rewards = WeightedRewards.from_config(cfg.rewards, device, reward_fns)
        world = has_world_identities(records, manifest or cfg.data.eval_manifest or "the evaluation manifest")
        scorer = FaceScorer(FaceAnalyzer(faces), curricular, curricularface_bgr) if faces is not None else None
        return cls(rewards, world, scorer)

    def __call__(self, videos: torch.Tensor, records: Sequence[PromptRecord],
                 references: Sequence[Sequence[np.ndarray]]) -> BatchScores:
        total, per_reward = self.rewards(videos, references, [r.prompt for r in records], records=records)
        for name, value in per_reward.items():  # a report's means and win rates have no way to leave a sample out
            if not torch.isfinite(value).all():
                raise ValueError(f"rewards: {name!r} returned NaN or inf")
        scores = {"reward": total.double().numpy(), **{f"reward/{n}": v.double().numpy() for n, v in per_reward.items()}}
        per_person: dict[str, list[np.ndarray]] = {}
        if self.world:
            scores.update({f"world_{k}": v.double().numpy() for k, v in world_identity_scores(videos, records).items()})
            per_person["world_identity"] = [np.asarray(p, dtype=np.float64) for p in per_person_scores(videos, records)]
        if self.faces is not None:
            face_scores, per_person["face_similarity"] = self.faces(to_uint8(videos), records)
            scores.update(face_scores)
        return BatchScores(scores, per_person)
