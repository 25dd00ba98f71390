"""IPRO's reward-gradient pieces (arXiv 2510.14255): a differentiable ArcFace recognizer, crops that
pass gradients to the pixels, and the multi-person face-pool identity reward."""
from identity_grpo.faces.crop import align_faces, crop_faces
from identity_grpo.faces.pool_reward import (
    Detections,
    FaceLocations,
    FacePool,
    assign_detections,
    build_pool,
    identity_reward,
    pool_reward,
    pools_from_videos,
)
from identity_grpo.faces.iresnet import ARCHITECTURES, TINY, IResNet, IResNetConfig, load_arcface

__all__ = [
    "ARCHITECTURES",
    "TINY",
    "Detections",
    "FaceLocations",
    "FacePool",
    "IResNet",
    "IResNetConfig",
    "align_faces",
    "assign_detections",
    "build_pool",
    "crop_faces",
    "identity_reward",
    "load_arcface",
    "pool_reward",
    "pools_from_videos",
]
