"""IPRO's face reward on the synthetic world: the world's face detector and embedder (trained on
first use, cached), and pools from ground-truth clips the world renders of the prompt's people.

    reward = world_face_reward(WorldFaceSettings(), device)   # a DifferentiableFaceReward

Cache: cache_dir/faces-<hash of the settings and of BUILDING_MODULES' source>/ holds embedder.safetensors and detector.safetensors (state dicts; no pickle)
and faces.json (settings, training records, seconds), written last; a folder is built under a
temporary name and renamed into place, so concurrent runs never see half a cache.

Pools: IPRO pools each person's faces over every frame of the prompt's ground-truth video. The
world can film its people: `pool_clips` clips of the prompt's identities (seeded by who they
are, so a prompt always gets the same pool) with random backgrounds, poses and blinks; every
person's face in every frame is cropped at the renderer's box and embedded.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from identity_grpo.core.config_io import ConfigError, check_options, require_at_least
from identity_grpo.core.cache_folders import build_threads, is_complete, publish, scratch_folder, settings_hash
from identity_grpo.core.code_hash import source_hash
from identity_grpo.core.shipped import shipped_copy
from identity_grpo.faces.crop import crop_faces
from identity_grpo.faces.differentiable_reward import DifferentiableFaceReward
from identity_grpo.faces.pool_reward import FacePool
from identity_grpo.faces.iresnet import IResNet
from identity_grpo.world.face_detector import DetectorTraining, HeadDetector, train_detector
from identity_grpo.world.face_embedder import EmbedderTraining, train_embedder
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.world.prompt_manifests import world_identities
from identity_grpo.world.clips import sample_clip

CACHE_FORMAT = 1  # bump when the meaning of a cached folder changes
# The code that builds the cached models (this module and what it imports): its source hash keys the
# folder, so changed training code trains anew (tests/core/test_code_hash.py checks the list is closed).
BUILDING_MODULES = [
    "identity_grpo.core.cache_folders",
    "identity_grpo.core.code_hash",
    "identity_grpo.core.config_io",
    "identity_grpo.core.prompt_manifest",
    "identity_grpo.core.video",
    "identity_grpo.faces.crop",
    "identity_grpo.faces.differentiable_reward",
    "identity_grpo.faces.identity_metrics",
    "identity_grpo.faces.iresnet",
    "identity_grpo.faces.pool_reward",
    "identity_grpo.world.clips",
    "identity_grpo.world.face_detector",
    "identity_grpo.world.face_embedder",
    "identity_grpo.world.face_models",
    "identity_grpo.world.identities",
    "identity_grpo.world.measure",
    "identity_grpo.world.prompt_manifests",
    "identity_grpo.world.prompt_set",
    "identity_grpo.world.render",
]
COMPLETE_MARKER = "faces.json"


@dataclass
class WorldFaceSettings:
    cache_dir: str = "data/cache/world_faces"
    seed: int = 0
    embedder: EmbedderTraining = field(default_factory=EmbedderTraining)
    detector: DetectorTraining = field(default_factory=DetectorTraining)
    detect_threshold: float = 0.3  # a detector peak at least this high is a face
    pool_clips: int = 2  # ground-truth clips rendered per prompt for its pool
    pool_frames: int = 9  # frames per pool clip

    def validate(self) -> None:
        check_options("embedder", self.embedder)
        check_options("detector", self.detector)
        require_at_least("", self, 1, "pool_clips", "pool_frames")
        if not 0 < self.detect_threshold < 1:
            raise ConfigError(f"detect_threshold must be in (0, 1), got {self.detect_threshold}")


def cache_folder(settings: WorldFaceSettings) -> Path:
    keyed = {"format": CACHE_FORMAT, "code": source_hash(BUILDING_MODULES), "seed": settings.seed, "embedder": asdict(settings.embedder),
             "detector": asdict(settings.detector)}
    return Path(settings.cache_dir) / f"faces-{settings_hash(keyed)}"


def world_face_models(settings: WorldFaceSettings, device: torch.device | str = "cpu",
                      progress: bool = True) -> tuple[IResNet, HeadDetector]:
    """The frozen embedder and detector for these settings, training and caching them first if needed."""
    settings.validate()
    folder = shipped_copy(cache_folder(settings)) or cache_folder(settings)  # the repository's copy, if it ships one
    if not is_complete(folder, COMPLETE_MARKER):
        start = time.perf_counter()
        with build_threads():  # the same weights whatever the machine's thread count
            embedder, embedder_record = train_embedder(settings.embedder, settings.seed, progress)
            middle = time.perf_counter()
            detector, detector_record = train_detector(settings.detector, settings.embedder, settings.seed, progress)
        tmp = scratch_folder(folder)
        save_file({k: v.contiguous() for k, v in embedder.state_dict().items()}, tmp / "embedder.safetensors")
        save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, tmp / "detector.safetensors")
        record = {"settings": asdict(settings), "embedder": embedder_record, "detector": detector_record,
                  "embedder_seconds": middle - start, "detector_seconds": time.perf_counter() - middle}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(record))
        publish(tmp, folder, COMPLETE_MARKER)
    embedder = IResNet(settings.embedder.iresnet)
    embedder.load_state_dict(load_file(folder / "embedder.safetensors"))
    detector = HeadDetector()
    detector.load_state_dict(load_file(folder / "detector.safetensors"))
    return (embedder.to(device).eval().requires_grad_(False), detector.to(device).eval().requires_grad_(False))


@torch.no_grad()
def world_pool(embedder: IResNet, record: PromptRecord, settings: WorldFaceSettings) -> FacePool:
    """Each of the prompt's people in every frame of `pool_clips` rendered clips of them."""
    people = world_identities(record)
    rng = np.random.default_rng([settings.seed, 31, *[p.id for p in people]])
    look = settings.embedder
    per_person: list[list[torch.Tensor]] = [[] for _ in people]
    device = next(embedder.parameters()).device
    for _ in range(settings.pool_clips):
        clip = sample_clip(rng, people, settings.pool_frames, look.frame_height, look.frame_width)
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div(255.0).to(device)
        for p in range(len(people)):
            crops = crop_faces(frames, torch.from_numpy(clip.boxes[:, p]), look.iresnet.input_size, look.crop_margin)
            per_person[p].append(embedder.embed(crops))
    return FacePool([torch.cat(parts) for parts in per_person])


def world_face_reward(settings: WorldFaceSettings, device: torch.device | str = "cpu",
                      progress: bool = True) -> DifferentiableFaceReward:
    embedder, detector = world_face_models(settings, device, progress)

    def locate(frames: torch.Tensor, max_faces: int):
        return detector.detect(frames, max_faces, settings.detect_threshold)

    return DifferentiableFaceReward(embedder, locate, lambda record: world_pool(embedder, record, settings),
                                    margin=settings.embedder.crop_margin)
