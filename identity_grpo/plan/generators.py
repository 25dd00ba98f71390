"""What every stage-2 plan (GRPO, IPRO) shares: the published generator behind a config, its resident
parts, the reward models it scores with, and the stated assumptions."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from identity_grpo.core.config_io import from_dict, load_config
from identity_grpo.plan import activations as act
from identity_grpo.plan.architectures import (CLIP_VIT_H, QWEN2_5_VL_3B, UMT5_XXL, WAN22_A14B_EXPERT, WAN_I2V_14B,
                                              WAN_T2V_1_3B, WAN_VACE_1_3B, WAN_VAE, WanTransformerArch)
from identity_grpo.plan.budget import DTYPE_BYTES, GB, Item, Launch, PlanError

PUBLISHED_REWARD = Path(__file__).resolve().parents[2] / "configs" / "reward" / "qwen2_5_vl_3b.yaml"


@dataclass
class Generator:
    name: str
    transformers: list[WanTransformerArch]  # resident (two experts for Wan2.2-A14B)
    trained: WanTransformerArch  # the one that carries the LoRA and runs the trained steps
    image_encoder: bool  # Wan2.1 I2V's CLIP
    branches: int  # sequences per sample in one guided forward
    reference_frames: int  # latent frames the references add to each sequence


def generator_of(g, people: int) -> Generator:
    """The published checkpoint behind generator.pretrained (matched by kind and size)."""
    name = g.pretrained.lower()
    if g.kind == "vace" and "1.3b" in name:
        return Generator("Wan2.1-VACE-1.3B", [WAN_VACE_1_3B], WAN_VACE_1_3B, False,
                         2 if g.vace.guidance_scale > 1 else 1, people)
    if g.kind == "phantom" and "1.3b" in name:
        from identity_grpo.generators.phantom import guidance_weights

        weights = guidance_weights(g.phantom.guidance_scale_img, g.phantom.guidance_scale_text)
        return Generator("Phantom-Wan-1.3B (Wan2.1-T2V-1.3B)", [WAN_T2V_1_3B], WAN_T2V_1_3B, False,
                         sum(w != 0 for w in weights), people)
    if g.kind == "i2v" and "a14b" in name:
        return Generator("Wan2.2-I2V-A14B (two experts)", [WAN22_A14B_EXPERT] * 2, WAN22_A14B_EXPERT, False,
                         2 if g.i2v.guidance_scale > 1 else 1, 0)
    if g.kind == "i2v" and "14b" in name:
        return Generator("Wan2.1-I2V-14B", [WAN_I2V_14B], WAN_I2V_14B, True,
                         2 if g.i2v.guidance_scale > 1 else 1, 0)
    raise PlanError(f"generator.pretrained {g.pretrained!r} (kind {g.kind}): the planner sizes the published "
                    "checkpoints only (Wan2.1-VACE-1.3B, Wan2.1-T2V-1.3B + Phantom, Wan2.1-I2V-14B, Wan2.2-I2V-A14B)")


def generator_resident(g, gen: Generator, shards: int) -> list[Item]:
    dtype, shard_note = DTYPE_BYTES[g.dtype], f", FSDP / {shards}" if shards > 1 else ""
    params = sum(a.params() for a in gen.transformers)
    items = [Item(f"transformer {gen.name} ({params / 1e9:.2f}B, {g.dtype}{shard_note})", params * dtype / shards,
                  "generator shards (FSDP): --shard fsdp / more --gpus")]
    text = UMT5_XXL.params() * dtype
    where = "offloaded to CPU, prompt embeddings cached" if g.offload_text_encoder else "on the GPU"
    items.append(Item(f"text encoder UMT5-XXL ({UMT5_XXL.params() / 1e9:.2f}B; {text / GB:.1f} GB, {where})",
                      0.0 if g.offload_text_encoder else text, "generator.offload_text_encoder"))
    if gen.image_encoder:  # it embeds each sample's first frame, made from its references: nothing to cache per prompt
        clip = CLIP_VIT_H.params() * 4
        items.append(Item(f"image encoder CLIP ViT-H/14 ({CLIP_VIT_H.params() / 1e9:.2f}B; fp32, on the GPU)", clip,
                          "generator.kind (the I2V image encoder runs on every sample's first frame)"))
    items.append(Item(f"VAE ({WAN_VAE.params() / 1e6:.0f}M, {g.vae_dtype})", WAN_VAE.params() * DTYPE_BYTES[g.vae_dtype],
                      "generator.vae_dtype"))
    return items


def lora_item(lora, arch: WanTransformerArch, shards: int, state_bytes: int, what: str) -> Item:
    count = arch.lora_params(lora.r, list(lora.target_modules))
    shard_note = f", FSDP / {shards}" if shards > 1 else ""
    return Item(f"LoRA r{lora.r} ({count / 1e6:.1f}M) + {what} (fp32{shard_note})", count * state_bytes / shards, "lora.r")


def reward_model_bytes(spec) -> tuple[int, str]:
    dtype = spec.options.get("dtype", "bfloat16")
    return (QWEN2_5_VL_3B.params() + QWEN2_5_VL_3B.lora_params(reward_settings(spec.path).lora_r)), dtype


def reward_models(specs, field_name: str) -> list[Item]:
    """The reward models kept on the GPU; one with options.offload is there only while scoring (scoring())."""
    items = []
    for i, spec in enumerate(specs):
        if spec.name != "reward_model":
            continue
        count, dtype = reward_model_bytes(spec)
        offload = spec.options.get("offload", False)
        items.append(Item(f"reward model {field_name}[{i}] Qwen2.5-VL-3B + LoRA ({count / 1e9:.2f}B, {dtype}"
                          f"{'; offloaded to CPU, on the GPU while scoring' if offload else ''})",
                          0.0 if offload else count * DTYPE_BYTES[dtype], f"{field_name}[{i}].options.offload"))
    return items


def reward_settings(path: str):
    """The scored model's input settings: its own saved config, else the published stage-1 recipe's."""
    from reward_model.config import RewardConfig
    from reward_model.model import RewardModelConfig

    saved = Path(path) / "reward_config.json"
    if saved.is_file():
        return from_dict(RewardModelConfig, json.loads(saved.read_text())["config"], source=str(saved))
    return load_config(RewardConfig, PUBLISHED_REWARD).model


def scoring(specs, coef: dict, height: int, width: int, frames: int, clips: int, launch: Launch,
             field_name: str) -> list[Item]:
    items = []
    for i, spec in enumerate(specs):
        if spec.name != "reward_model":
            continue
        m = reward_settings(spec.path)
        sample = act.reward_input(height, width, min(frames, m.num_frames), m.max_pixels, m.reference_max_pixels,
                                  launch.people, launch.reward_text_tokens)
        batch = min(clips, int(spec.options.get("batch_size", 8)))
        if spec.options.get("offload", False):
            count, dtype = reward_model_bytes(spec)
            items.append(Item(f"{field_name}[{i}] reward model brought in to score ({dtype})",
                              count * DTYPE_BYTES[dtype], f"{field_name}[{i}] (the reward model's dtype option)"))
        items.append(Item(f"{field_name}[{i}] no-grad forward ({batch} clips x {sample.tokens} tokens, "
                          f"{sample.patches} patches)", act.qwen_nograd(coef, sample, batch),
                          f"{field_name}[{i}].options.batch_size"))
    return items


def decode_item(g, coef: dict, height: int, width: int, frames: int, clips: int, lever: str) -> Item:
    """A no-grad decode of `clips` clips, tiled with generator.vae_tiling."""
    tiled = g.vae_tiling
    return Item(f"VAE no-grad decode ({clips} clip(s) {width}x{height}x{frames}"
                f"{', tiled: one clip, one 256-pixel tile at a time' if tiled else ''})",
                act.vae_decode_nograd(coef, height, width, frames, clips, tiled),
                lever if tiled else f"generator.vae_tiling / {lever}")


def fsdp_blocks(arch: WanTransformerArch, shards: int, dtype: str) -> list[Item]:
    """FSDP all-gathers one block to run it and prefetches the next."""
    if shards == 1:
        return []
    return [Item("FSDP: 2 gathered blocks", 2 * arch.block_params() * DTYPE_BYTES[dtype], "--shard none")]


def frames_bytes(clips: int, frames: int, height: int, width: int) -> float:
    return clips * frames * height * width * 3 * 4  # decoded clips, float32


def eval_size(s, o) -> tuple[int, int, int]:
    return s.eval_height or o.height, s.eval_width or o.width, s.eval_num_frames or o.num_frames


def stage2_assumptions(launch: Launch, shards: int, gen: Generator) -> list[str]:
    lines = [f"{launch.gpus} GPUs x {launch.gpu_memory:g} GB, {launch.reserve:g} GB kept free per GPU "
             "(CUDA context, NCCL buffers, fragmentation)",
             f"generator transformer(s) fully sharded with FSDP2 over {shards} GPUs (LoRA and its optimizer state "
             "too); the launch config chooses it (launch/accelerate/), not the experiment" if shards > 1 else
             "no FSDP (--shard none): every GPU holds the whole transformer(s)"]
    if gen.reference_frames:
        lines.append(f"{launch.people} reference images per sample, one latent frame each (--people)")
    return lines
