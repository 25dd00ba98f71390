"""Tiny Wan image-to-video components (random weights, milliseconds on a CPU) for tests and
`generator.pretrained: tiny`: the real diffusers / transformers classes at test size, built the
way generators/tiny.py builds the VACE ones (each builder seeded, the global RNG untouched)."""
from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from transformers import CLIPVisionConfig, CLIPVisionModel

from identity_grpo.generators.tiny import TinyWanConfig, tiny_text_encoder, tiny_tokenizer, tiny_vae
from identity_grpo.generators.wan_i2v import I2vGenerator, I2vOptions

TINY_CLIP_SIZE = 32  # the tiny image encoder's input side (a real CLIP ViT-H/14 takes 224)
TINY_IMAGE_DIM = 16  # its hidden size, the transformer's image_dim


def tiny_image_encoder(seed: int = 0) -> CLIPVisionModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=TINY_IMAGE_DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            image_size=TINY_CLIP_SIZE, patch_size=8, projection_dim=16,
        ))
    return model.eval()


def tiny_i2v_transformer(config: TinyWanConfig, seed: int = 0, image_dim: int | None = TINY_IMAGE_DIM,
                         temporal_factor: int = 4) -> WanTransformer3DModel:
    """Input: latents, t_f mask channels and condition latents; image_dim None: no CLIP branch (Wan2.2)."""
    inner = config.num_heads * config.head_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
            in_channels=2 * config.z_dim + temporal_factor, out_channels=config.z_dim, text_dim=config.text_dim,
            freq_dim=32, ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
            image_dim=image_dim, added_kv_proj_dim=inner if image_dim is not None else None,
        )
    return model.eval()


def tiny_i2v_generator(options: I2vOptions, config: TinyWanConfig | None = None, seed: int = 0) -> I2vGenerator:
    """Wan2.1-style (one transformer with a CLIP branch) when options.boundary_ratio is 0, else
    Wan2.2-A14B-style (two experts, no image encoder). float32, CPU."""
    config = config or TinyWanConfig()
    two_experts = options.boundary_ratio > 0
    image_dim = None if two_experts else TINY_IMAGE_DIM
    return I2vGenerator.from_components(
        tiny_i2v_transformer(config, seed, image_dim),
        tiny_vae(config, seed + 1),
        tiny_text_encoder(config, seed + 2),
        tiny_tokenizer(),
        options,
        image_encoder=None if two_experts else tiny_image_encoder(seed + 3),
        transformer_2=tiny_i2v_transformer(config, seed + 4, image_dim) if two_experts else None,
    )
