"""Build the configured generator (VACE or Phantom, real weights or tiny random ones), and views
of one generator with other options that share its modules (evaluation resolution, no guidance)."""
from __future__ import annotations

import dataclasses

import torch

from identity_grpo.config import TINY, TOY, GeneratorConfig
from identity_grpo.generators.phantom import PhantomGenerator
from identity_grpo.generators.tiny import (
    TinyWanConfig,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_vace_generator,
    tiny_vae,
    tiny_wan_transformer,
)
from identity_grpo.generators.vace import VaceGenerator

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WanGenerator = VaceGenerator | PhantomGenerator


def build_generator(cfg: GeneratorConfig, device: torch.device | str = "cpu") -> WanGenerator:
    """From a diffusers folder / hub id; "tiny": the real classes at test size with seeded random
    weights (float32; each component gets its own seed as generators/tiny.py does); "toy": the
    synthetic world's toy generator of this kind, pretrained on first use (float32)."""
    if cfg.pretrained == TOY:
        from identity_grpo.synthetic.pretrain_generator import load_toy_generator  # only the synthetic world needs it

        return load_toy_generator(cfg.kind, cfg.toy_cache_dir, options=cfg.options, device=device)
    if cfg.pretrained == TINY:
        tiny = TinyWanConfig()
        if cfg.kind == "vace":
            generator = tiny_vace_generator(cfg.vace, tiny, seed=cfg.seed)
        else:
            generator = PhantomGenerator.from_components(
                tiny_wan_transformer(tiny, cfg.seed), tiny_vae(tiny, cfg.seed + 1),
                tiny_text_encoder(tiny, cfg.seed + 2), tiny_tokenizer(), cfg.phantom,
            )
        for module in (generator.transformer, generator.vae, generator.text_encoder):
            module.to(device)
        return generator
    dtype, vae_dtype = DTYPES[cfg.dtype], DTYPES[cfg.vae_dtype]
    if cfg.kind == "vace":
        return VaceGenerator.from_pretrained(cfg.pretrained, dtype=dtype, options=cfg.vace, device=device, vae_dtype=vae_dtype)
    return PhantomGenerator.from_pretrained(
        cfg.pretrained, phantom_checkpoint=cfg.phantom_checkpoint or None, dtype=dtype,
        options=cfg.phantom, device=device, vae_dtype=vae_dtype,
    )


def with_options(generator: WanGenerator, **changes) -> WanGenerator:
    """The same transformer, VAE and text encoder under changed options (no copy of any weight)."""
    if not isinstance(generator, (VaceGenerator, PhantomGenerator)):
        raise TypeError(f"generator_factory.with_options: unsupported generator {type(generator).__name__}")
    if not changes:
        return generator
    options = dataclasses.replace(generator.options, **changes)
    return type(generator)(generator.transformer, generator.vae, generator.text_encoder, generator.tokenizer, options)


def without_guidance(generator: WanGenerator) -> WanGenerator:
    """Classifier-free guidance off: one conditional branch per forward (Phantom: text + references)."""
    if isinstance(generator, VaceGenerator):
        return with_options(generator, guidance_scale=1.0)
    if isinstance(generator, PhantomGenerator):
        return with_options(generator, guidance_scale_img=1.0, guidance_scale_text=1.0)
    raise TypeError(f"generator_factory.without_guidance: unsupported generator {type(generator).__name__}")


def at_resolution(generator: WanGenerator, height: int = 0, width: int = 0, num_frames: int = 0) -> WanGenerator:
    """A view generating at another size; 0 keeps the current value."""
    changes = {k: v for k, v in (("height", height), ("width", width), ("num_frames", num_frames)) if v}
    if not changes:
        return generator
    return with_options(generator, **changes)
