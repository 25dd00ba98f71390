"""The planner's parameter formulas against numel() of the real classes: at tiny widths (every
option of each formula) and at the published sizes on the meta device (no memory, no download)."""
import dataclasses

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
from peft import LoraConfig, inject_adapter_in_model
from transformers import (CLIPVisionConfig, CLIPVisionModel, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          UMT5Config, UMT5EncoderModel)

from identity_grpo.finetune.config import LoraSettings
from identity_grpo.finetune.lora import attach_lora
from identity_grpo.plan import architectures as A
from reward_model.model import LORA_TARGETS


def numel(module: torch.nn.Module, only: str = "") -> int:
    return sum(p.numel() for name, p in module.named_parameters() if only in name)


def wan(arch: A.WanTransformerArch) -> torch.nn.Module:
    cls = WanVACETransformer3DModel if arch.vace_layers else WanTransformer3DModel
    return cls(**arch.diffusers_kwargs())


TINY_WAN = A.WanTransformerArch(num_layers=3, num_attention_heads=2, attention_head_dim=8, ffn_dim=24, in_channels=5,
                                out_channels=3, text_dim=12, freq_dim=16)
TINY_QWEN = A.Qwen2_5_VLArch(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                             vision=A.QwenVisionArch(depth=2, hidden_size=32, intermediate_size=40, num_heads=2,
                                                     out_hidden_size=64, fullatt_block_indexes=(1,)))


def qwen(arch: A.Qwen2_5_VLArch) -> torch.nn.Module:
    v = arch.vision
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                         num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
                         num_key_value_heads=arch.num_key_value_heads),
        vision_config=dict(depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                           num_heads=v.num_heads, out_hidden_size=v.out_hidden_size,
                           fullatt_block_indexes=list(v.fullatt_block_indexes)),
        tie_word_embeddings=arch.tie_word_embeddings)
    return Qwen2_5_VLForConditionalGeneration._from_config(config)


@pytest.mark.parametrize("arch", [
    TINY_WAN,
    dataclasses.replace(TINY_WAN, vace_layers=(0, 2), vace_in_channels=7),
    dataclasses.replace(TINY_WAN, image_dim=6),
], ids=["t2v", "vace", "i2v"])
def test_wan_transformer_formula_at_tiny_width(arch):
    model = wan(arch)
    assert arch.params() == numel(model)
    assert arch.block_params() == numel(model.blocks[0])
    params = attach_lora(model, LoraSettings(r=3, alpha=3.0))
    assert arch.lora_params(3, ["to_q", "to_k", "to_v", "to_out.0"]) == sum(p.numel() for p in params)


def test_other_formulas_at_tiny_width():
    vae = A.WanVaeArch(base_dim=4, z_dim=3, dim_mult=(1, 2, 2), num_res_blocks=1, temperal_downsample=(True, False))
    model = AutoencoderKLWan(**vae.diffusers_kwargs(), latents_mean=[0.0] * 3, latents_std=[1.0] * 3)
    assert (vae.params(), vae.decoder_params()) == (numel(model), numel(model.decoder))
    umt5 = A.Umt5EncoderArch(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=3,
                             relative_attention_num_buckets=8)
    assert umt5.params() == numel(UMT5EncoderModel(UMT5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=3, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu")))
    clip = A.ClipVisionArch(hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                            image_size=28, patch_size=7)
    assert clip.params() == numel(CLIPVisionModel(CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)))
    model = qwen(TINY_QWEN)
    assert TINY_QWEN.params() == numel(model)
    assert TINY_QWEN.vision.merger_params() == numel(model.model.visual.merger)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=LORA_TARGETS), model)
    assert TINY_QWEN.lora_params(4) == numel(model, "lora_")


def test_published_sizes_on_the_meta_device():
    with torch.device("meta"):
        for arch in (A.WAN_T2V_1_3B, A.WAN_VACE_1_3B, A.WAN_I2V_14B, A.WAN22_A14B_EXPERT):
            assert arch.params() == numel(wan(arch))
        assert A.WAN_VAE.params() == numel(AutoencoderKLWan(**A.WAN_VAE.diffusers_kwargs()))
        assert A.QWEN2_5_VL_3B.params() == numel(qwen(A.QWEN2_5_VL_3B))
    # The sizes quoted in the design: UMT5-XXL 11.4 GB in bf16, Wan2.2-A14B's two experts ~57 GB.
    assert round(A.UMT5_XXL.params() * 2 / 1e9, 1) == 11.4
    assert round(2 * A.WAN22_A14B_EXPERT.params() * 2 / 1e9) == 57
