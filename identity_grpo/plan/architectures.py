"""The published architectures the planner sizes, as small dataclasses, and their parameter counts.

The counts are closed formulas over each config (no model is built, so planning takes no time
and no memory); tests/plan/test_architectures.py checks every formula against `numel()` of the
real diffusers / transformers classes built at tiny widths, and at the published sizes on the
meta device. Field names follow the libraries' config keys.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from math import prod


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


@dataclass(frozen=True)
class WanTransformerArch:
    """diffusers WanTransformer3DModel (and WanVACETransformer3DModel when vace_layers is set)."""

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    ffn_dim: int
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    image_dim: int | None = None  # CLIP features (Wan2.1 I2V): an image branch in every cross-attention
    vace_layers: tuple[int, ...] = ()
    vace_in_channels: int = 96

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def diffusers_kwargs(self) -> dict:
        kwargs = dict(patch_size=self.patch_size, num_attention_heads=self.num_attention_heads,
                      attention_head_dim=self.attention_head_dim, in_channels=self.in_channels,
                      out_channels=self.out_channels, text_dim=self.text_dim, freq_dim=self.freq_dim,
                      ffn_dim=self.ffn_dim, num_layers=self.num_layers, cross_attn_norm=True,
                      qk_norm="rms_norm_across_heads", image_dim=self.image_dim,
                      added_kv_proj_dim=self.dim if self.image_dim else None)
        if self.vace_layers:
            kwargs.update(vace_layers=list(self.vace_layers), vace_in_channels=self.vace_in_channels)
        return kwargs

    def block_params(self) -> int:
        d = self.dim
        attention = 4 * _linear(d, d) + 2 * d  # q, k, v, out + the q/k RMSNorms
        image = 2 * _linear(d, d) + d if self.image_dim else 0  # add_k/add_v + norm_added_k
        ffn = _linear(d, self.ffn_dim) + _linear(self.ffn_dim, d)
        return 2 * attention + image + 2 * d + ffn + 6 * d  # + affine cross-attn norm, scale_shift_table

    def params(self) -> int:
        d, patch = self.dim, prod(self.patch_size)
        embed = self.in_channels * d * patch + d
        time = _linear(self.freq_dim, d) + _linear(d, d) + _linear(d, 6 * d)
        text = _linear(self.text_dim, d) + _linear(d, d)
        image = 0
        if self.image_dim:
            i = self.image_dim
            image = 2 * i + _linear(i, i) + _linear(i, d) + 2 * d  # LayerNorm, FeedForward (mult 1), LayerNorm
        head = _linear(d, self.out_channels * patch) + 2 * d
        vace = 0
        if self.vace_layers:
            vace = self.vace_in_channels * d * patch + d + len(self.vace_layers) * (self.block_params() + _linear(d, d))
            vace += _linear(d, d)  # the first VACE block's input projection
        return embed + time + text + image + self.num_layers * self.block_params() + head + vace

    def lora_params(self, rank: int, targets: list[str]) -> int:
        """LoRA on the attention projections (diffusers names: to_q, to_k, to_v, to_out.0) of both
        attentions of every block, VACE blocks included: r * (in + out) per adapted d x d layer."""
        known = {"to_q", "to_k", "to_v", "to_out.0"}
        unknown = set(targets) - known
        if unknown:
            raise ValueError(f"planner: LoRA targets {sorted(unknown)} are not modelled (known: {sorted(known)})")
        blocks = self.num_layers + len(self.vace_layers)
        return blocks * 2 * len(targets) * rank * 2 * self.dim


@dataclass(frozen=True)
class Umt5EncoderArch:
    """transformers UMT5EncoderModel (every layer has its own relative-position bias)."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32

    def params(self) -> int:
        inner = self.num_heads * self.d_kv
        attention = 4 * self.d_model * inner + self.relative_attention_num_buckets * self.num_heads + self.d_model
        ff = 3 * self.d_model * self.d_ff + self.d_model  # gated: wi_0, wi_1, wo; no biases
        return self.vocab_size * self.d_model + self.num_layers * (attention + ff) + self.d_model


@dataclass(frozen=True)
class WanVaeArch:
    """diffusers AutoencoderKLWan (the Wan2.1 VAE: 8x spatial, 4x temporal, 16 latent channels)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # sic: diffusers' spelling

    def diffusers_kwargs(self) -> dict:
        return dict(base_dim=self.base_dim, z_dim=self.z_dim, dim_mult=list(self.dim_mult),
                    num_res_blocks=self.num_res_blocks, temperal_downsample=list(self.temperal_downsample))

    def decoder_params(self) -> int:
        dims = [self.base_dim * m for m in (self.dim_mult[-1], *self.dim_mult[::-1])]
        total = _conv3(self.z_dim, dims[0]) + _mid(dims[0])
        upsample = list(self.temperal_downsample[::-1])
        for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            current = n_in // 2 if i > 0 else n_in  # Wan2.1: the upsampler before halved the channels
            for _ in range(self.num_res_blocks + 1):
                total += _resblock(current, n_out)
                current = n_out
            if i != len(self.dim_mult) - 1:
                total += _conv2(n_out, n_out // 2) + (3 * n_out * 2 * n_out + 2 * n_out if upsample[i] else 0)
        return total + dims[-1] + _conv3(dims[-1], 3)

    def params(self) -> int:
        dims = [self.base_dim * m for m in (1, *self.dim_mult)]
        encoder = _conv3(3, dims[0])
        for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(self.num_res_blocks):
                encoder += _resblock(n_in, n_out)
                n_in = n_out
            if i != len(self.dim_mult) - 1:
                encoder += _conv2(n_out, n_out) + (3 * n_out * n_out + n_out if self.temperal_downsample[i] else 0)
        encoder += _mid(dims[-1]) + dims[-1] + _conv3(dims[-1], 2 * self.z_dim)
        quant = _linear(2 * self.z_dim, 2 * self.z_dim) + _linear(self.z_dim, self.z_dim)  # 1x1x1 convolutions
        return encoder + quant + self.decoder_params()


def _conv3(n_in: int, n_out: int) -> int:  # causal 3x3x3 convolution with bias
    return 27 * n_in * n_out + n_out


def _conv2(n_in: int, n_out: int) -> int:  # 3x3 convolution with bias
    return 9 * n_in * n_out + n_out


def _resblock(n_in: int, n_out: int) -> int:  # two RMS norms (gamma only), two 3x3x3 convs, 1x1x1 shortcut
    shortcut = _linear(n_in, n_out) if n_in != n_out else 0
    return n_in + _conv3(n_in, n_out) + n_out + _conv3(n_out, n_out) + shortcut


def _mid(dim: int) -> int:  # residual, single-head attention (norm, qkv, proj as 1x1 convs), residual
    return 2 * _resblock(dim, dim) + dim + _linear(dim, 3 * dim) + _linear(dim, dim)


@dataclass(frozen=True)
class ClipVisionArch:
    """transformers CLIPVisionModel: Wan2.1-I2V's image encoder (open-clip ViT-H/14)."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14

    def params(self) -> int:
        d = self.hidden_size
        positions = (self.image_size // self.patch_size) ** 2 + 1
        embeddings = d + 3 * self.patch_size**2 * d + positions * d
        layer = 4 * _linear(d, d) + 4 * d + _linear(d, self.intermediate_size) + _linear(self.intermediate_size, d)
        return embeddings + 2 * d + self.num_hidden_layers * layer + 2 * d


@dataclass(frozen=True)
class QwenVisionArch:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    out_hidden_size: int = 2048
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)

    def block_params(self) -> int:
        d, i = self.hidden_size, self.intermediate_size
        return 2 * d + _linear(d, 3 * d) + _linear(d, d) + 2 * _linear(d, i) + _linear(i, d)

    def merger_params(self) -> int:  # RMSNorm, then an MLP over each 2x2 group of patches
        merged = self.hidden_size * self.spatial_merge_size**2
        return self.hidden_size + _linear(merged, merged) + _linear(merged, self.out_hidden_size)

    def params(self) -> int:
        patch = 3 * self.temporal_patch_size * self.patch_size**2 * self.hidden_size
        return patch + self.depth * self.block_params() + self.merger_params()


@dataclass(frozen=True)
class Qwen2_5_VLArch:
    """transformers Qwen2_5_VLForConditionalGeneration (Qwen2.5-VL-3B-Instruct's config.json)."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    tie_word_embeddings: bool = True
    vision: QwenVisionArch = field(default_factory=QwenVisionArch)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def layer_params(self) -> int:
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attention = _linear(h, h) + 2 * _linear(h, kv) + _linear(h, h, bias=False)
        return attention + 3 * _linear(h, self.intermediate_size, bias=False) + 2 * h

    def language_params(self) -> int:
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.vocab_size * self.hidden_size + self.num_hidden_layers * self.layer_params() + self.hidden_size + head

    def params(self) -> int:
        return self.vision.params() + self.language_params()

    def lora_params(self, rank: int) -> int:
        """LoRA on every linear layer of the language model (reward_model.model.LORA_TARGETS)."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        per_layer = (h + h) * 2 + (h + kv) * 2 + 3 * (h + i)  # q, o; k, v; gate, up, down
        return self.num_hidden_layers * rank * per_layer


# The published configs (the model repositories' config.json files).
WAN_T2V_1_3B = WanTransformerArch(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960)
WAN_VACE_1_3B = dataclasses.replace(WAN_T2V_1_3B, vace_layers=tuple(range(0, 30, 2)), vace_in_channels=96)
WAN_I2V_14B = WanTransformerArch(num_layers=40, num_attention_heads=40, attention_head_dim=128, ffn_dim=13824,
                                 in_channels=36, image_dim=1280)
WAN22_A14B_EXPERT = dataclasses.replace(WAN_I2V_14B, image_dim=None)  # Wan2.2-I2V-A14B: two of these
UMT5_XXL = Umt5EncoderArch()
WAN_VAE = WanVaeArch()
CLIP_VIT_H = ClipVisionArch()
QWEN2_5_VL_3B = Qwen2_5_VLArch()
