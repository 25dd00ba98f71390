"""Toy Wan components sized for the synthetic world: the real diffusers / transformers classes
(AutoencoderKLWan, WanVACETransformer3DModel, WanTransformer3DModel, UMT5EncoderModel) at a size
that trains in minutes on a CPU. pretrain_generator.py trains them; this file only builds them.

Sizing, for the world's 48x64 clips:
- VAE: 2x spatial and 2x temporal compression (one downsampling level, also in time), z_dim 4,
  Wan2.2's residual down/up blocks, which train several times faster from scratch than Wan2.1's
  plain ones. The world's faces are ~16x20 pixels with eyes and mouth 1-2 pixels tall: a 4x VAE
  reconstructed held-out clips like a 4x blur (the world's identity measure 0.43, rendered clips
  0.93), a 2x one keeps the faces (z_dim 4: 0.73; see the README's toy generator table). The Wan
  VAE encodes the first frame alone and then chunks of 4 frames, so a clip has 1 + 4k frames:
  9 here (5 latent frames of 24x32), the nearest to the world's 8.
- Transformer: patch (1, p, p) with p = patch_size = 4 keeps a token at 8x8 pixels: 6x8 tokens
  per latent frame, ~330-400 tokens a sequence with 2-3 references. A token carries
  z_dim * p^2 = 64 latent values into a width of 96: with z_dim 16 (256 values) the samples kept
  the noise the token could not carry (validate() refuses such sizes).
- Text: the world's own word-level vocabulary (42 words + punctuation) and a frozen, randomly
  initialized one-layer UMT5; the transformer learns to read its output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from identity_grpo.generators.phantom import PhantomOptions
from identity_grpo.generators.tiny import vace_in_channels
from identity_grpo.generators.vace import VaceOptions
from identity_grpo.world.identities import vocabulary
from reward_model.tiny import build_word_tokenizer


@dataclass
class ToyModelConfig:
    """Sizes of the toy components and the clips they make."""

    height: int = 48
    width: int = 64
    num_frames: int = 9  # 1 + 4k (the Wan VAE's chunking)
    reference_size: int = 32  # references are render_reference(identity, reference_size)
    z_dim: int = 4
    vae_base_dim: int = 8
    vae_dim_mult: list[int] = field(default_factory=lambda: [2, 2])  # len - 1 downsamplings
    vae_temporal_downsample: list[bool] = field(default_factory=lambda: [True])
    text_dim: int = 32
    text_layers: int = 1
    max_sequence_length: int = 80  # the longest world prompt (three people) is 74 words and marks
    num_heads: int = 4
    head_dim: int = 24  # Wan's rotary embedding splits it into t/h/w parts
    patch_size: int = 4  # latent pixels per token side: a token covers patch_size * spatial factor pixels
    num_layers: int = 4
    ffn_dim: int = 256
    # A VACE block beside every layer: with blocks at [0, 2] only (the real 1.3B's every other
    # layer) the base toy VACE drew the right people with smeared faces (held-out identity 0.18);
    # with all four it reaches 0.43 at the same steps.
    vace_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3])

    def validate(self) -> None:
        name = "toy_generators.ToyModelConfig"
        if len(self.vae_temporal_downsample) != len(self.vae_dim_mult) - 1:
            raise ValueError(f"{name}.vae_temporal_downsample: needs len(vae_dim_mult) - 1 = "
                             f"{len(self.vae_dim_mult) - 1} entries, got {len(self.vae_temporal_downsample)}")
        temporal, spatial = self.scale_factors
        cell = self.patch_size * spatial  # pixels per token side
        if self.height % cell or self.width % cell:
            raise ValueError(f"{name}: height and width must be multiples of {cell}, got {self.height}x{self.width}")
        if (self.num_frames - 1) % 4 or (self.num_frames - 1) % temporal:
            raise ValueError(f"{name}.num_frames: must be 1 + 4k (and 1 + {temporal}k), got {self.num_frames}")
        values, width = self.z_dim * self.patch_size ** 2, self.num_heads * self.head_dim
        if values > width:  # a token's noise must fit through it for the velocity to name it
            raise ValueError(f"{name}: a token holds z_dim * patch_size^2 = {values} latent values, more than the "
                             f"transformer's width num_heads * head_dim = {width}; samples would keep the noise it cannot carry")
        if self.head_dim < 6:
            raise ValueError(f"{name}.head_dim: Wan's rotary embedding needs >= 6, got {self.head_dim}")
        if any(not 0 <= i < self.num_layers for i in self.vace_layers):
            raise ValueError(f"{name}.vace_layers: every entry must be in [0, {self.num_layers}), got {self.vace_layers}")

    @property
    def scale_factors(self) -> tuple[int, int]:
        """(temporal, spatial) compression of the VAE, as wan_common.vae_scale_factors reads it."""
        return 2 ** sum(self.vae_temporal_downsample), 2 ** len(self.vae_temporal_downsample)


def toy_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level over the world's prompt vocabulary; saves and reloads through AutoTokenizer."""
    return build_word_tokenizer(vocabulary())


def toy_text_encoder(config: ToyModelConfig, seed: int) -> UMT5EncoderModel:
    """Randomly initialized and never trained (Wan keeps its UMT5 frozen too): distinct words
    still give distinct, position-aware embeddings, which the transformer learns to read."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(UMT5Config(
            vocab_size=len(toy_tokenizer()), d_model=config.text_dim, d_kv=config.text_dim // 2,
            d_ff=2 * config.text_dim, num_layers=config.text_layers, num_heads=2,
            relative_attention_num_buckets=16, relative_attention_max_distance=config.max_sequence_length,
            dropout_rate=0.0,
        ))
    return model.eval()


def toy_vae(config: ToyModelConfig, seed: int) -> AutoencoderKLWan:
    """Untrained; latents_mean / latents_std are set from data after pretraining."""
    config.validate()
    temporal, spatial = config.scale_factors
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=config.vae_base_dim, z_dim=config.z_dim, dim_mult=list(config.vae_dim_mult),
            num_res_blocks=1, temperal_downsample=list(config.vae_temporal_downsample), is_residual=True,
            latents_mean=[0.0] * config.z_dim, latents_std=[1.0] * config.z_dim,
            scale_factor_temporal=temporal, scale_factor_spatial=spatial,
        )
    return vae


def _transformer_kwargs(config: ToyModelConfig) -> dict:
    return dict(
        patch_size=(1, config.patch_size, config.patch_size), num_attention_heads=config.num_heads, attention_head_dim=config.head_dim,
        in_channels=config.z_dim, out_channels=config.z_dim, text_dim=config.text_dim, freq_dim=64,
        ffn_dim=config.ffn_dim, num_layers=config.num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
    )


def toy_vace_transformer(config: ToyModelConfig, seed: int) -> WanVACETransformer3DModel:
    config.validate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanVACETransformer3DModel(
            **_transformer_kwargs(config), vace_layers=list(config.vace_layers),
            vace_in_channels=vace_in_channels(config.z_dim, config.scale_factors[1]),
        )


def toy_phantom_transformer(config: ToyModelConfig, seed: int) -> WanTransformer3DModel:
    config.validate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**_transformer_kwargs(config))


def toy_vace_options(config: ToyModelConfig, **overrides) -> VaceOptions:
    """Sampling options at the toy's size. The toy's samples hardly change with VACE's guidance
    (it contrasts prompts only; the references stay in both branches) or with the shift."""
    values = dict(height=config.height, width=config.width, num_frames=config.num_frames,
                  max_sequence_length=config.max_sequence_length, guidance_scale=3.0, shift=3.0)
    return VaceOptions(**{**values, **overrides})


def toy_phantom_options(config: ToyModelConfig, **overrides) -> PhantomOptions:
    """Sampling options at the toy's size; guidance 3 / 3 scored above none and above 6 / 6."""
    values = dict(height=config.height, width=config.width, num_frames=config.num_frames,
                  max_sequence_length=config.max_sequence_length, guidance_scale_img=3.0,
                  guidance_scale_text=3.0, shift=3.0)
    return PhantomOptions(**{**values, **overrides})
