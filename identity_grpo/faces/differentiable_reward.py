"""The reward IPRO backpropagates: each person's generated face against a pool of their faces.

    reward = DifferentiableFaceReward(recognizer, locate, pool_of)(videos, records)   # [B], with grad

1. where (no gradient): `locate` finds faces in every frame (a detector: boxes, maybe landmarks);
2. who (no gradient): each frame's faces are matched to the prompt's people by the recognizer's
   cosine to each person's mean pool embedding (Hungarian, identity_reward.assign_detections);
3. how well (gradient): every matched face is cropped / aligned with grid_sample, embedded by the
   frozen recognizer, and scored by its mean cosine to its person's pool (identity_reward).

`pool_of(record)` gives a prompt's pool (one FacePool, people in reference order); pools are
built once per prompt and kept. The synthetic world and real data differ only in the locator and
the pool source (ipro/world_faces.py, ipro/arcface_reward.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from identity_grpo.faces.pool_reward import Detections, FacePool, assign_detections, identity_reward
from identity_grpo.faces.iresnet import IResNet
from identity_grpo.core.prompt_manifest import PromptRecord

# frames [N, 3, H, W] in [0, 1] (no gradient), max faces per frame -> one Detections per frame
FaceLocator = Callable[[torch.Tensor, int], list[Detections]]
PoolSource = Callable[[PromptRecord], FacePool]


def record_key(record: PromptRecord) -> tuple:
    """What identifies a prompt's people: its text, reference files and manifest fields."""
    return record.prompt, tuple(str(p) for p in record.references), repr(sorted(record.extra.items()))


class DifferentiableFaceReward:
    def __init__(self, recognizer: IResNet, locate: FaceLocator, pool_of: PoolSource, margin: float = 0.0,
                 min_similarity: float = -1.0, extra_faces: int = 1) -> None:
        self.recognizer = recognizer.eval().requires_grad_(False)
        self.locate = locate
        self.pool_of = pool_of
        self.margin = margin  # crop margin (box crops only), as the recognizer was trained
        self.min_similarity = min_similarity  # below it a face is nobody; -1: every found face is someone
        self.extra_faces = extra_faces  # faces kept per frame beyond the prompt's people (a stranger competes)
        self._pools: dict[tuple, FacePool] = {}

    def pools(self, records: Sequence[PromptRecord]) -> list[FacePool]:
        pools = []
        for record in records:
            key = record_key(record)
            if key not in self._pools:
                pool = self.pool_of(record)
                if pool.num_people != len(record.references):
                    raise ValueError(f"face reward: prompt {record.prompt[:40]!r}... has {len(record.references)} "
                                     f"references but a pool of {pool.num_people} people")
                self._pools[key] = pool
            pools.append(self._pools[key])
        return pools

    def __call__(self, videos: torch.Tensor, records: Sequence[PromptRecord]) -> torch.Tensor:
        """videos [B, T, H, W, 3] in [0, 1] (the generators' decode output) -> reward [B], float32,
        differentiable with respect to the videos."""
        if videos.ndim != 5 or videos.shape[-1] != 3 or len(records) != len(videos):
            raise ValueError(f"face reward: videos must be [B, T, H, W, 3] with one record each, got "
                             f"{tuple(videos.shape)} and {len(records)} records")
        frames = videos.permute(0, 1, 4, 2, 3)  # [B, T, 3, H, W]
        pools = self.pools(records)
        batch, length = frames.shape[:2]
        with torch.no_grad():
            most = max(pool.num_people for pool in pools) + self.extra_faces
            found = self.locate(frames.detach().flatten(0, 1).clamp(0, 1), most)
            per_video = [found[b * length : (b + 1) * length] for b in range(batch)]
            locations = assign_detections(self.recognizer, frames.detach(), per_video, pools,
                                          self.min_similarity, self.margin)
        return identity_reward(self.recognizer, frames, locations, pools, self.margin)
