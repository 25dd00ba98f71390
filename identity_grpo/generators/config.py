"""The `generator` section of the stage-2 configs (GRPO and IPRO alike): which generator, which
weights, at which size. Validated before any model loads.

    kind: vace | phantom | i2v       pretrained: a diffusers folder, a hub id, "tiny" or "toy"
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from identity_grpo.core.config_io import ConfigError, check_options, require_local
from identity_grpo.core.hub import is_hub_id
from identity_grpo.generators.phantom import PhantomOptions
from identity_grpo.generators.vace import VaceOptions
from identity_grpo.generators.wan_i2v import I2vOptions

TINY = "tiny"  # generator.pretrained value that builds random tiny components (tests, no download)
TOY = "toy"  # generator.pretrained value: the toy generator pretrained on the synthetic world (cached)
BUILT_IN = (TINY, TOY)  # generator.pretrained values that are not paths or hub ids
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class GeneratorConfig:
    kind: Literal["vace", "phantom", "i2v"] = "vace"
    # A diffusers-layout folder or hub id ("Wan-AI/Wan2.1-VACE-1.3B-diffusers"); "tiny" (random test
    # components) or "toy" (pretrained on the synthetic world on first use, cached in data/cache).
    pretrained: str = ""
    # phantom only: an original Phantom-Wan checkpoint (.pth / .safetensors) that replaces the
    # T2V transformer's weights; empty: the folder's transformer/ is used as it is.
    phantom_checkpoint: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    vae_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Encode every training and held-out prompt once at setup, keep the embeddings on the CPU and move
    # the text encoder (UMT5-XXL, 11 GB in bf16) off the GPU for the run; an unseen prompt is then an error.
    offload_text_encoder: bool = False
    # Decode without gradients (GRPO's rollouts, every evaluation) one clip at a time in overlapping
    # 256-pixel spatial tiles (diffusers' AutoencoderKLWan tiling): the decoder's working set drops from
    # a batch of whole frames to one tile, the frames differ slightly at tile seams. Decodes with
    # gradients (IPRO) stay untiled.
    vae_tiling: bool = False
    seed: int = 0  # weight seed of the tiny components
    toy_cache_dir: str = "data/cache/toy_generators"  # "toy": where the pretrained toy generators are kept
    vace: VaceOptions = field(default_factory=VaceOptions)
    phantom: PhantomOptions = field(default_factory=PhantomOptions)
    i2v: I2vOptions = field(default_factory=I2vOptions)

    @property
    def options(self) -> VaceOptions | PhantomOptions | I2vOptions:
        """The options of the configured kind (training resolution and guidance)."""
        return {"vace": self.vace, "phantom": self.phantom, "i2v": self.i2v}[self.kind]

    def validate(self) -> None:
        """What the file alone decides."""
        if self.phantom_checkpoint and self.kind != "phantom":
            raise ConfigError("generator.phantom_checkpoint: only for generator.kind = phantom")
        if self.kind == "i2v" and self.pretrained == TOY:
            raise ConfigError("generator.pretrained: the synthetic world has no toy i2v generator (use vace or phantom)")
        check_options(f"generator.{self.kind}", self.options)

    def check_inputs(self) -> None:
        """The weights are named and their local files exist (hub ids, "tiny" and "toy" are not paths)."""
        if not self.pretrained:
            raise ConfigError("generator.pretrained: required (a diffusers folder, a hub id, 'tiny' or 'toy')")
        if self.pretrained not in BUILT_IN and not is_hub_id(self.pretrained):
            require_local(self.pretrained, "generator.pretrained", "folder")
        if self.phantom_checkpoint:
            require_local(self.phantom_checkpoint, "generator.phantom_checkpoint", "file")
