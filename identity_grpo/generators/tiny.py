"""Tiny Wan-family components built from configs: the real diffusers / transformers classes at a
size that runs in milliseconds on a CPU. The synthetic world's toy generators are pretrained
from these, and the tests use them with random weights.

Each builder takes a seed and leaves the global RNG untouched, so the same seed gives the same
weights wherever it is called.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

from identity_grpo.generators.vace import VaceGenerator, VaceOptions


@dataclass
class TinyWanConfig:
    z_dim: int = 4  # latent channels of the VAE and the transformer
    vae_base_dim: int = 3
    # Not unit statistics, so that tests notice a missing or doubled normalization.
    latents_mean: list[float] = field(default_factory=lambda: [0.1, -0.2, 0.3, -0.4])
    latents_std: list[float] = field(default_factory=lambda: [1.5, 0.8, 1.2, 2.0])
    text_dim: int = 32  # UMT5 d_model = transformer text_dim
    text_layers: int = 1
    num_heads: int = 2
    head_dim: int = 12  # Wan's rotary embedding splits it into t/h/w parts, needs >= 6
    num_layers: int = 2
    ffn_dim: int = 32
    vace_layers: list[int] = field(default_factory=lambda: [0])

    def validate(self) -> None:
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError("tiny.TinyWanConfig: latents_mean and latents_std need z_dim entries each")


def tiny_tokenizer() -> ByT5Tokenizer:
    """A byte-level tokenizer that needs no vocabulary file (384 ids, pad 0, eos 1)."""
    return ByT5Tokenizer()


def tiny_text_encoder(config: TinyWanConfig, seed: int = 0) -> UMT5EncoderModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tiny_tokenizer()),
                d_model=config.text_dim,
                d_kv=config.text_dim // 2,
                d_ff=2 * config.text_dim,
                num_layers=config.text_layers,
                num_heads=2,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                dropout_rate=0.0,
            )
        )
    return model.eval()


def tiny_vae(config: TinyWanConfig, seed: int = 0) -> AutoencoderKLWan:
    config.validate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=config.vae_base_dim,
            z_dim=config.z_dim,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=list(config.latents_mean),
            latents_std=list(config.latents_std),
        )
    return vae.eval()


def _transformer_kwargs(config: TinyWanConfig) -> dict:
    return dict(
        patch_size=(1, 2, 2),
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.z_dim,
        out_channels=config.z_dim,
        text_dim=config.text_dim,
        freq_dim=32,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


def vace_in_channels(z_dim: int, spatial_factor: int = 8) -> int:
    """VACE control input: inactive + reactive video latents, then one mask channel per pixel of
    a spatial_factor x spatial_factor latent cell."""
    return 2 * z_dim + spatial_factor**2


def tiny_vace_transformer(config: TinyWanConfig, seed: int = 0) -> WanVACETransformer3DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanVACETransformer3DModel(
            **_transformer_kwargs(config),
            vace_layers=list(config.vace_layers),
            vace_in_channels=vace_in_channels(config.z_dim),
        )
    return model.eval()


def tiny_wan_transformer(config: TinyWanConfig, seed: int = 0) -> WanTransformer3DModel:
    """The text-to-video backbone (what Phantom builds on)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WanTransformer3DModel(**_transformer_kwargs(config))
    return model.eval()


def tiny_vace_generator(options: VaceOptions, config: TinyWanConfig | None = None, seed: int = 0) -> VaceGenerator:
    """A VaceGenerator over tiny components (float32, CPU); each component gets its own seed."""
    config = config or TinyWanConfig()
    return VaceGenerator.from_components(
        tiny_vace_transformer(config, seed),
        tiny_vae(config, seed + 1),
        tiny_text_encoder(config, seed + 2),
        tiny_tokenizer(),
        options,
    )
