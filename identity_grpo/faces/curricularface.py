"""CurricularFace's IR-101 face recognizer, loaded from a backbone .pth the user supplies, for the
FaceSim-Cur metric of OpenS2V-Eval (report/face_scores.py).

The original release publishes the backbone as a PyTorch state dict; its layer layout is the
"IR" network of face.evoLVe, rebuilt here (our code) with the same module names so that file loads
strictly:
    input_layer   conv3x3(3 -> 64) without bias, BatchNorm2d, PReLU
    body.<i>      one unit per residual block, four stages of (3, 13, 30, 3) units for IR-101 with
                  widths (64, 128, 256, 512); a stage's first unit has stride 2. A unit is
                  res_layer: BN, conv3x3, PReLU, conv3x3 (the stride), BN; plus shortcut_layer: a
                  1x1 max-pool with the stride when the width is unchanged, else conv1x1 + BN
    output_layer  BatchNorm2d, Dropout, flatten, Linear(512 * 7 * 7 -> 512), BatchNorm1d
Input: aligned 112x112 face crops scaled to [-1, 1]; output: the 512-d embedding (compared by cosine).
The stage layout, widths, embedding size and input size are read from the file's tensor shapes
(`layout_of`; a stage starts where the width changes, true of every published IR), so any IR
depth, and the tiny ones the tests make, load the same way.
Nothing in the file runs: torch.load(weights_only=True) reads tensors and plain containers only.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from identity_grpo.core.config_io import ConfigError

IR_101_UNITS = (3, 13, 30, 3)
IR_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class IRLayout:
    units: tuple[int, ...]  # residual units per stage (IR-101: 3, 13, 30, 3)
    widths: tuple[int, ...]  # channels per stage; the stem has 64 channels in the original
    stem: int = 64
    embedding_dim: int = 512
    input_size: int = 112  # square crop side; the four stride-2 stages divide it by 16
    affine_features: bool = True  # whether the last BatchNorm1d has a weight and bias

    @property
    def final_side(self) -> int:
        return self.input_size // 2 ** len(self.units)


IR_101 = IRLayout(IR_101_UNITS, IR_WIDTHS)


class IRUnit(nn.Module):
    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)  # a strided identity: no parameters
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRNet(nn.Module):
    """IR backbone: [N, 3, S, S] in [-1, 1] -> [N, embedding_dim] (not normalised)."""

    def __init__(self, layout: IRLayout = IR_101):
        super().__init__()
        self.layout = layout
        self.input_layer = nn.Sequential(nn.Conv2d(3, layout.stem, 3, 1, 1, bias=False), nn.BatchNorm2d(layout.stem),
                                         nn.PReLU(layout.stem))
        units, channels = [], layout.stem
        for count, width in zip(layout.units, layout.widths):
            for k in range(count):
                units.append(IRUnit(channels, width, 2 if k == 0 else 1))
                channels = width
        self.body = nn.Sequential(*units)
        side = layout.final_side
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(channels), nn.Dropout(), nn.Flatten(), nn.Linear(channels * side * side, layout.embedding_dim),
            nn.BatchNorm1d(layout.embedding_dim, affine=layout.affine_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))

    @torch.no_grad()
    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """crops [N, 3, S, S] RGB in [0, 1] -> [N, D] unit embeddings."""
        return nn.functional.normalize(self((crops - 0.5) / 0.5).float(), dim=-1)


def layout_of(state: dict[str, torch.Tensor], where: str = "the state dict") -> IRLayout:
    """The IR layout a state dict was saved from, read from its tensor shapes."""
    try:
        depths = {}
        for key, value in state.items():
            match = re.fullmatch(r"body\.(\d+)\.res_layer\.1\.weight", key)
            if match:
                depths[int(match.group(1))] = int(value.shape[0])
        if not depths or sorted(depths) != list(range(len(depths))):
            raise KeyError("body.<i>.res_layer.1.weight")
        units, widths = [], []
        for i in range(len(depths)):
            if widths and depths[i] == widths[-1]:  # a stage starts where the width changes
                units[-1] += 1
            else:
                units.append(1)
                widths.append(depths[i])
        linear = state["output_layer.3.weight"]  # [D, C * side * side]
        side = math.isqrt(int(linear.shape[1]) // widths[-1])
        return IRLayout(tuple(units), tuple(widths), stem=int(state["input_layer.0.weight"].shape[0]),
                        embedding_dim=int(linear.shape[0]), input_size=side * 2 ** len(units),
                        affine_features="output_layer.4.weight" in state)
    except (KeyError, IndexError) as error:
        raise ConfigError(f"{where}: not an IR (CurricularFace) backbone state dict, missing {error}") from None


def load_curricularface(path: str | Path) -> IRNet:
    """A CurricularFace (IR) backbone from a .pth state dict (a DataParallel "module." prefix and a
    {"state_dict": ...} wrapper are accepted), in eval mode; ConfigError naming the file if it is
    missing, not plain tensors, or not an IR backbone."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"faces.curricularface: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means it is not a plain state dict
        raise ConfigError(f"faces.curricularface: {path} does not load as plain tensors ({error})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"faces.curricularface: {path} holds a {type(state).__name__}, not a state dict")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    model = IRNet(layout_of(state, str(path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # older torch did not save it
    if missing or unexpected:
        raise ConfigError(f"faces.curricularface: {path} does not match the IR layout it implies "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval().requires_grad_(False)
