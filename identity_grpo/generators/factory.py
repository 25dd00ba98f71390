"""Build the configured generator (VACE, Phantom or Wan I2V; real weights, tiny random ones or the
synthetic world's toy ones). Views of a built generator (another resolution, no guidance) come
from the generator itself: `generator.with_options(...)`, `generator.without_guidance()`."""
from __future__ import annotations

import torch

from identity_grpo.generators.base import Generator
from identity_grpo.generators.config import DTYPES, TINY, TOY, GeneratorConfig
from identity_grpo.generators.phantom import PhantomGenerator
from identity_grpo.generators.tiny import TinyWanConfig, tiny_text_encoder, tiny_tokenizer, tiny_vace_generator, tiny_vae, tiny_wan_transformer
from identity_grpo.generators.tiny_i2v import tiny_i2v_generator
from identity_grpo.generators.vace import VaceGenerator
from identity_grpo.generators.wan_i2v import I2vGenerator


def build_generator(cfg: GeneratorConfig, device: torch.device | str = "cpu") -> Generator:
    """From a diffusers folder / hub id; "tiny": the real classes at test size with seeded random
    weights (float32; each component gets its own seed as generators/tiny.py does); "toy": the
    synthetic world's toy generator of this kind, pretrained on first use (float32). With
    cfg.vae_tiling its no-grad decodes are tiled (wan_common.tiled_decode)."""
    generator = _build(cfg, device)
    if cfg.vae_tiling:
        generator.vae.enable_tiling()
    return generator


def _build(cfg: GeneratorConfig, device: torch.device | str) -> Generator:
    if cfg.pretrained == TOY:
        from identity_grpo.generators.toy_pretraining import load_toy_generator  # only the synthetic world needs it

        return load_toy_generator(cfg.kind, cfg.toy_cache_dir, options=cfg.options, device=device)
    if cfg.pretrained == TINY:
        generator = tiny_generator(cfg)
        for module in generator.modules():
            module.to(device)
        return generator
    dtype, vae_dtype = DTYPES[cfg.dtype], DTYPES[cfg.vae_dtype]
    if cfg.kind == "vace":
        return VaceGenerator.from_pretrained(cfg.pretrained, dtype=dtype, options=cfg.vace, device=device, vae_dtype=vae_dtype)
    if cfg.kind == "i2v":
        return I2vGenerator.from_pretrained(cfg.pretrained, dtype=dtype, options=cfg.i2v, device=device, vae_dtype=vae_dtype)
    return PhantomGenerator.from_pretrained(
        cfg.pretrained, phantom_checkpoint=cfg.phantom_checkpoint or None, dtype=dtype,
        options=cfg.phantom, device=device, vae_dtype=vae_dtype,
    )


def tiny_generator(cfg: GeneratorConfig) -> Generator:
    """The configured kind at test size, on the CPU."""
    tiny = TinyWanConfig()
    if cfg.kind == "vace":
        return tiny_vace_generator(cfg.vace, tiny, seed=cfg.seed)
    if cfg.kind == "i2v":
        return tiny_i2v_generator(cfg.i2v, seed=cfg.seed)
    return PhantomGenerator.from_components(
        tiny_wan_transformer(tiny, cfg.seed), tiny_vae(tiny, cfg.seed + 1),
        tiny_text_encoder(tiny, cfg.seed + 2), tiny_tokenizer(), cfg.phantom,
    )
