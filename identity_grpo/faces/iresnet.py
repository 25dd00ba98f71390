"""ArcFace's "iresnet" face recognizer in PyTorch, loading insightface's public arcface_torch checkpoints.

IPRO's reward needs gradients from a face-similarity score back to the pixels, which the ONNX
recognizer of an insightface model pack cannot give. The same family of networks is published
as PyTorch state dicts by insightface's `recognition/arcface_torch` (backbone.pth for r18, r34,
r50, r100); the module and parameter names here follow that layout so those files load strictly.

Architecture: a 3x3 stem (conv, BN, PReLU) at full resolution, four stages of "improved" residual
blocks (BN, conv3x3, BN, PReLU, conv3x3 with the stage's stride 2 on the first block, BN; a 1x1
conv + BN shortcut on the first block), then BN, flatten, dropout, a linear layer to the embedding
and a last BatchNorm1d ("features"). Input 112x112 RGB scaled to [-1, 1]; output 512-d.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class IResNetConfig:
    layers: tuple[int, int, int, int]  # residual blocks per stage
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # channels per stage; the stem has widths[0]
    embedding_dim: int = 512
    input_size: int = 112  # square face crop side in pixels; each stage halves it, so a multiple of 16
    dropout: float = 0.0  # before the final linear layer (active in training mode only)

    def validate(self) -> None:
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"layers: four stages of >= 1 blocks, got {self.layers}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths: four positive channel counts, got {self.widths}")
        if self.input_size < 16 or self.input_size % 16:
            raise ValueError(f"input_size: a positive multiple of 16, got {self.input_size}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")


# The public arcface_torch backbones (block counts of insightface's iresnet18/34/50/100).
ARCHITECTURES: dict[str, IResNetConfig] = {
    "r18": IResNetConfig(layers=(2, 2, 2, 2)),
    "r34": IResNetConfig(layers=(3, 4, 6, 3)),
    "r50": IResNetConfig(layers=(3, 4, 14, 3)),
    "r100": IResNetConfig(layers=(3, 13, 30, 3)),
}
# For the synthetic world on a CPU: its faces are about 32 pixels, so a 32-pixel input loses nothing.
TINY = IResNetConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), embedding_dim=64, input_size=32)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block; the stride sits on the second convolution."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-5)
        self.prelu = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels, eps=1e-5)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def _stage(in_channels: int, channels: int, blocks: int) -> nn.Sequential:
    """One resolution stage: the first block halves the resolution (and changes the width)."""
    first = IBasicBlock(in_channels, channels, stride=2)
    return nn.Sequential(first, *(IBasicBlock(channels, channels, stride=1) for _ in range(blocks - 1)))


class IResNet(nn.Module):
    def __init__(self, config: IResNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        stem = config.widths[0]
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5)
        self.prelu = nn.PReLU(stem)
        (w1, w2, w3, w4), (n1, n2, n3, n4) = config.widths, config.layers
        self.layer1 = _stage(stem, w1, n1)
        self.layer2 = _stage(w1, w2, n2)
        self.layer3 = _stage(w2, w3, n3)
        self.layer4 = _stage(w3, w4, n4)
        self.bn2 = nn.BatchNorm2d(w4, eps=1e-5)
        self.dropout = nn.Dropout(p=config.dropout)
        final_side = config.input_size // 16
        self.fc = nn.Linear(w4 * final_side * final_side, config.embedding_dim)
        self.features = nn.BatchNorm1d(config.embedding_dim, eps=1e-5)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, 3, S, S] already normalised to [-1, 1] -> [N, D] raw (not unit-length) embeddings."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [N, 3, S, S] RGB in [0, 1] -> [N, D] unit-length embeddings, differentiable w.r.t. faces."""
        size = self.config.input_size
        if faces.ndim != 4 or faces.shape[1:] != (3, size, size):
            raise ValueError(f"IResNet.embed: faces must be [N, 3, {size}, {size}] RGB crops, got {tuple(faces.shape)}")
        parameter = self.conv1.weight
        # ArcFace was trained on (pixel / 255 - 0.5) / 0.5.
        x = (faces.to(device=parameter.device, dtype=parameter.dtype) - 0.5) / 0.5
        return F.normalize(self(x).float(), dim=-1)


class ArcFaceCheckpointError(ValueError):
    """A checkpoint file whose tensors do not fit the requested iresnet architecture."""


def load_arcface(path: str | Path, arch: str | IResNetConfig = "r50") -> IResNet:
    """A frozen recognizer (eval mode, no parameter gradients) from an arcface_torch backbone .pth.

    `arch` is a name in ARCHITECTURES or a config (e.g. a recognizer trained on the synthetic
    world and saved with torch.save(model.state_dict())). arcface_torch's training checkpoints
    (checkpoint_gpu_*.pt) keep the backbone under "state_dict_backbone"; those load too.
    """
    path = Path(path)
    if isinstance(arch, str):
        if arch not in ARCHITECTURES:
            raise ValueError(f"load_arcface: arch must be one of {sorted(ARCHITECTURES)} or an IResNetConfig, got {arch!r}")
        config = ARCHITECTURES[arch]
    else:
        config = arch
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ArcFace checkpoint not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict_backbone"), dict):
        state = state["state_dict_backbone"]
    if not isinstance(state, dict):
        raise ArcFaceCheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = IResNet(config)
    model.load_state_dict(_checked_state(model, dict(state), path), strict=True)
    return model.eval().requires_grad_(False)


def _checked_state(model: IResNet, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """`state` with the model's exact keys and shapes, or ArcFaceCheckpointError naming the first misfit.

    BatchNorm's `num_batches_tracked` only counts training steps and is absent from older saves;
    a missing one is taken from the fresh model rather than refused.
    """
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                state[key] = value
                continue
            missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
            raise ArcFaceCheckpointError(
                f"{path}: missing key {key!r} ({len(missing)} missing in all) for iresnet {_describe(model.config)}"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise ArcFaceCheckpointError(
                f"{path}: {key!r} has shape {tuple(state[key].shape)}, iresnet {_describe(model.config)} "
                f"expects {tuple(value.shape)}"
            )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ArcFaceCheckpointError(
            f"{path}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all) "
            f"for iresnet {_describe(model.config)}"
        )
    return state


def _describe(config: IResNetConfig) -> str:
    names = [name for name, known in ARCHITECTURES.items() if known == config]
    return names[0] if names else str(config)
