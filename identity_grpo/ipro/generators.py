"""The generators IPRO trains: GRPO's VACE / Phantom (generator_factory) and Wan image-to-video."""
from __future__ import annotations

import torch

from identity_grpo.config import TINY
from identity_grpo.generator_factory import DTYPES, at_resolution, build_generator
from identity_grpo.generators.base import Generator
from identity_grpo.generators.tiny_i2v import tiny_i2v_generator
from identity_grpo.generators.wan_i2v import I2vGenerator
from identity_grpo.ipro.config import IproGeneratorConfig


def build_ipro_generator(cfg: IproGeneratorConfig, device: torch.device | str = "cpu") -> Generator:
    """kind vace / phantom as GRPO builds them; i2v from a diffusers folder / hub id, or "tiny"."""
    if cfg.kind != "i2v":
        return build_generator(cfg, device)
    if cfg.pretrained == TINY:
        generator = tiny_i2v_generator(cfg.i2v, seed=cfg.seed)
        for module in (generator.transformer, generator.transformer_2, generator.vae, generator.text_encoder,
                       generator.image_encoder):
            if module is not None:
                module.to(device)
        return generator
    return I2vGenerator.from_pretrained(cfg.pretrained, dtype=DTYPES[cfg.dtype], options=cfg.i2v, device=device,
                                        vae_dtype=DTYPES[cfg.vae_dtype])


def evaluation_view(generator: Generator, height: int = 0, width: int = 0, num_frames: int = 0) -> Generator:
    """The same modules generating at another size (0 keeps a value)."""
    if isinstance(generator, I2vGenerator):
        changes = {k: v for k, v in (("height", height), ("width", width), ("num_frames", num_frames)) if v}
        return generator.with_options(**changes) if changes else generator
    return at_resolution(generator, height, width, num_frames)
