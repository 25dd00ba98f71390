"""Measure the planner's activation coefficients on a CPU, at the real layer widths, random weights.

    .venv/bin/python -m identity_grpo.plan.measure                     # all (about 35 min on 2 cores)
    .venv/bin/python -m identity_grpo.plan.measure --only vae qwen     # some, merged into the file

writes identity_grpo/plan/coefficients.json. A model is built at its real width with a few layers
(1-2) and a few tokens; the same forward is counted at two depths and two token counts, and a
linear fit splits the bytes into per layer and token, per layer and sequence (cross-attention
keys of the 512 text tokens), and the same outside the layers (embeddings, rotary tables, head).
What the fit assumes, that bytes grow linearly in tokens, holds because the CPU's attention kernel
(like a GPU's flash attention) keeps no tokens x tokens matrix; the residual of the fit is stored.

Precision: as the recipes run, bf16 weights (fp32 norms and LoRA) under CPU bf16 autocast. GPU
kernels may keep different intermediates: these are CPU-measured estimates, not yet confirmed on a
GPU (identity_grpo/plan/gpu_checks.py measures them there).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from identity_grpo.finetune.config import LoraSettings
from identity_grpo.finetune.lora import attach_lora
from identity_grpo.plan.architectures import (QWEN2_5_VL_3B, WAN22_A14B_EXPERT, WAN_I2V_14B, WAN_T2V_1_3B, WAN_VACE_1_3B,
                                              WAN_VAE, Qwen2_5_VLArch, WanTransformerArch, WanVaeArch)
from identity_grpo.plan.counting import LiveBytes, SavedBytes
from reward_model.tiny import mrope_section

COEFFICIENTS = Path(__file__).with_name("coefficients.json")
COMMAND = ".venv/bin/python -m identity_grpo.plan.measure"
NOTE = "CPU-measured estimate; not yet confirmed on a GPU"
TEXT_TOKENS = 512  # Wan pads every prompt to 512 UMT5 tokens
IMAGE_TOKENS = 257  # CLIP ViT-H/14 features of the first frame (Wan2.1 I2V)
GRPO_LORA = LoraSettings(r=32, alpha=32.0)


def _bf16(model: torch.nn.Module) -> torch.nn.Module:
    """bf16 weights except the modules diffusers keeps in fp32 when loading with torch_dtype=bf16."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else torch.bfloat16)
    return model


def _seeded(build: Callable[[], torch.nn.Module], seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _fit(rows: list[list[float]], values: list[float], names: list[str]) -> tuple[dict[str, float], float]:
    """Least squares; returns the named coefficients and the largest relative residual."""
    a, b = np.array(rows, dtype=np.float64), np.array(values, dtype=np.float64)
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    residual = float(np.max(np.abs(a @ x - b) / b))
    return {n: round(float(v), 1) for n, v in zip(names, x)}, residual


# --- Wan transformers ------------------------------------------------------------------------------

def reduced(arch: WanTransformerArch, layers: int, vace_layers: int = 0) -> WanTransformerArch:
    """`arch` cut to `layers` blocks; VACE: the first `vace_layers` blocks carry hints."""
    return dataclasses.replace(arch, num_layers=layers, vace_layers=tuple(range(vace_layers)))


def wan_model(arch: WanTransformerArch, lora: LoraSettings = GRPO_LORA, seed: int = 0) -> torch.nn.Module:
    """The diffusers transformer of `arch`, random bf16 weights, LoRA attached, in training mode."""
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    cls = WanVACETransformer3DModel if arch.vace_layers else WanTransformer3DModel
    model = _bf16(_seeded(lambda: cls(**arch.diffusers_kwargs()), seed))
    attach_lora(model, lora)
    return model.train()


def wan_inputs(arch: WanTransformerArch, frames: int, height: int, width: int, batch: int = 1) -> dict[str, torch.Tensor]:
    """Random bf16 inputs of one forward: latents [B, C, frames, height, width] (height/width in latent pixels)."""
    g = torch.Generator().manual_seed(1)
    bf16 = torch.bfloat16
    inputs = dict(
        hidden_states=torch.randn(batch, arch.in_channels, frames, height, width, generator=g).to(bf16),
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, arch.text_dim, generator=g).to(bf16),
    )
    if arch.image_dim:
        inputs["encoder_hidden_states_image"] = torch.randn(batch, IMAGE_TOKENS, arch.image_dim, generator=g).to(bf16)
    if arch.vace_layers:
        inputs["control_hidden_states"] = torch.randn(batch, arch.vace_in_channels, frames, height, width,
                                                      generator=g).to(bf16)
    return inputs


def tokens_of(inputs: dict[str, torch.Tensor], arch: WanTransformerArch) -> int:
    frames, height, width = inputs["hidden_states"].shape[2:]
    p = arch.patch_size
    return frames // p[0] * (height // p[1]) * (width // p[2])


def wan_forward(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(**inputs, return_dict=False)[0]


def wan_saved_bytes(model, inputs: dict[str, torch.Tensor], checkpointing: bool) -> int:
    """Bytes one training forward keeps for backward (checkpointing: the blocks' kept inputs + the rest)."""
    exclude = [*model.parameters(), *model.buffers(), *inputs.values()]
    with SavedBytes(exclude) as saved:
        if checkpointing:
            model.enable_gradient_checkpointing(saved.checkpoint_fn)
        else:
            model.disable_gradient_checkpointing()
        out = wan_forward(model, inputs)
    model.disable_gradient_checkpointing()
    del out
    return saved.bytes


def _backward_extra(model, inputs: dict[str, torch.Tensor]) -> int:
    """What a backward needs beyond what the forward kept."""
    with LiveBytes() as live:
        out = wan_forward(model, inputs)
        loss = out.float().square().mean()
        del out
        kept = live.current
        live.reset_peak()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return live.peak - kept


def wan_live(model, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """Peaks no hook sees: a no-grad forward's working set, and what a backward needs beyond what
    the forward kept (gradient buffers; with checkpointing, also one block recomputed)."""
    with torch.no_grad(), LiveBytes() as live:
        out = wan_forward(model, inputs)
        del out
    plain = _backward_extra(model, inputs)
    model.enable_gradient_checkpointing()
    checkpointed = _backward_extra(model, inputs)
    model.disable_gradient_checkpointing()
    return {"nograd_peak": live.peak, "backward_extra": plain, "backward_extra_checkpointed": checkpointed}


def measure_wan(arch: WanTransformerArch, token_sizes: list[tuple[int, int, int]], log=print,
                lora: LoraSettings = GRPO_LORA, live_sizes: list[tuple[int, int, int]] | None = None) -> dict:
    """Per-block coefficients of `arch` (VACE blocks separately), fitted over depths and token counts,
    then the working sets (no-grad peak, backward extra) of one block, fitted over live_sizes (default:
    token_sizes; empty: skipped). Working sets do not grow with depth (a checkpointed backward
    recomputes one block at a time), so they are measured on one block at more tokens, where the
    per-token part, not the per-sequence text keys, dominates.

    token_sizes, live_sizes: latent (frames, height, width) per measured token count, at least two."""
    depths = [(1, 1), (2, 1), (2, 2)] if arch.vace_layers else [(1, 0), (2, 0)]
    names = ["block_per_token", "block_per_seq", "fixed_per_token", "fixed_per_seq"]
    if arch.vace_layers:
        names[2:2] = ["vace_per_token", "vace_per_seq"]
    rows, saved, kept = [], [], []
    for main, vace in depths:
        model = wan_model(reduced(arch, main, vace), lora)
        for size in token_sizes:
            inputs = wan_inputs(arch, *size)
            n = tokens_of(inputs, arch)
            row = [main * n, main] + ([vace * n, vace] if arch.vace_layers else []) + [n, 1]
            rows.append(row)
            started = time.perf_counter()
            saved.append(wan_saved_bytes(model, inputs, checkpointing=False))
            kept.append(wan_saved_bytes(model, inputs, checkpointing=True))
            log(f"  {main} blocks + {vace} VACE, {n} tokens: saved {saved[-1] / n / 1024:.1f} KB/token, "
                f"checkpointed {kept[-1] / n / 1024:.1f} KB/token ({time.perf_counter() - started:.0f} s)")
        del model
    result = {"saved": _fit(rows, saved, names)[0], "checkpointed": _fit(rows, kept, names)[0]}
    result["fit_residual"] = round(max(_fit(rows, saved, names)[1], _fit(rows, kept, names)[1]), 4)
    live_sizes = token_sizes if live_sizes is None else live_sizes
    if not live_sizes:
        return result
    model = wan_model(reduced(arch, 1, 1 if arch.vace_layers else 0), lora)
    live_rows, live = [], {"nograd_peak": [], "backward_extra": [], "backward_extra_checkpointed": []}
    for size in live_sizes:
        inputs = wan_inputs(arch, *size)
        n = tokens_of(inputs, arch)
        live_rows.append([n, 1])
        for key, value in wan_live(model, inputs).items():
            live[key].append(value)
        log(f"  live at {n} tokens: " + ", ".join(f"{key} {v[-1] / n / 1024:.1f} KB/token" for key, v in live.items()))
    for key, values in live.items():
        result[key] = _fit(live_rows, values, ["per_token", "per_seq"])[0]
    return result


# --- Wan VAE decoder ---------------------------------------------------------------------------------

def vae_model(arch: WanVaeArch = WAN_VAE):
    from diffusers import AutoencoderKLWan

    return _seeded(lambda: AutoencoderKLWan(**arch.diffusers_kwargs())).requires_grad_(False).eval()


def vae_saved_bytes(vae, latents: torch.Tensor, autocast: bool) -> int:
    """What a decode with gradients to the latents keeps for backward."""
    latents = latents.clone().requires_grad_(True)
    with SavedBytes([*vae.parameters(), *vae.buffers(), latents]) as saved, \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = vae.decode(latents, return_dict=False)[0]
    del out
    return saved.bytes


def vae_nograd_peak(vae, latents: torch.Tensor) -> int:
    with torch.no_grad(), LiveBytes() as live:
        out = vae.decode(latents, return_dict=False)[0]
        del out
    return live.peak


def measure_vae(latent_sizes: list[tuple[int, int, int]], log=print, arch: WanVaeArch = WAN_VAE,
                autocast_modes: tuple[bool, ...] = (False, True),
                nograd_sizes: list[tuple[int, int, int]] = ()) -> dict:
    """Decoder bytes with gradients to the latents (IPRO; fp32, and under bf16 autocast) and the
    no-grad peak of a decode (GRPO's scoring). The decoder runs one latent frame at a time, so the
    fit has three terms: per output pixel-frame, per latent frame and pixel (its low-resolution
    stages run once per latent frame, and the first latent frame makes one pixel frame, the others
    four), and per latent frame (under autocast each call keeps bf16 copies of the fp32 weights).
    Without gradients one latent frame's working set is alive at a time beside the growing output
    (a per pixel-frame, a per pixel and a constant term), measured past the first latent frames
    (nograd_sizes), where the growth is the output's alone."""
    vae = vae_model(arch)
    result = {}
    for name, sizes, runs in [
            *[("grad_bf16" if a else "grad_fp32", latent_sizes, lambda z, a=a: vae_saved_bytes(vae, z, a))
              for a in autocast_modes],
            ("nograd_peak_fp32", nograd_sizes, lambda z: vae_nograd_peak(vae, z))]:
        if not sizes:
            continue
        rows, measured, grad = [], [], name.startswith("grad")
        for frames, height, width in sizes:
            z = torch.randn(1, arch.z_dim, frames, height, width, generator=torch.Generator().manual_seed(0))
            out_frames, pixels = 1 + 4 * (frames - 1), height * width * 64
            rows.append([pixels * out_frames, pixels * frames, frames] if grad else [pixels * out_frames, pixels, 1])
            measured.append(runs(z))
            log(f"  {name}, {frames} latent frames at {height}x{width}: "
                f"{measured[-1] / pixels / out_frames / 1024:.2f} KB per pixel-frame")
        names = ["per_pixel_frame", "per_latent_frame_pixel", "per_latent_frame"] if grad else [
            "per_pixel_frame", "per_pixel", "constant"]
        result[name], residual = _fit(rows, measured, names)
        result[name]["fit_residual"] = round(residual, 4)
    return result


def measure_vae_cache(latent_sizes: list[tuple[int, int]], log=print, arch: WanVaeArch = WAN_VAE) -> dict:
    """The causal context a graded chunk of IPRO's frame-subset decode keeps for its checkpoint's
    recompute (generators/causal_decode.py): the decoder's cache after latent frames 0 and 1, fp32
    and under bf16 autocast, per output pixel (it is two frames of every causal convolution's input,
    at each resolution level, so it grows with the frame's area only)."""
    from identity_grpo.generators.causal_decode import _decode_chunk
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    vae = vae_model(arch)
    result = {}
    for autocast in (False, True):
        rows, measured = [], []
        for height, width in latent_sizes:
            z = torch.randn(1, arch.z_dim, 2, height, width, generator=torch.Generator().manual_seed(0))
            cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                x = vae.post_quant_conv(z)
                for i in range(2):
                    holder = {}
                    _decode_chunk(vae, x[:, :, i : i + 1], cache, i == 0, holder)
                    cache = holder["cache"]
            storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache
                        if isinstance(t, torch.Tensor)}
            pixels = height * width * 64
            rows.append([pixels, 1])
            measured.append(sum(storages.values()))
            log(f"  cache after 2 latent frames at {height}x{width}{' (bf16 autocast)' if autocast else ''}: "
                f"{measured[-1] / pixels:.0f} bytes per pixel")
        name = "cache_bf16" if autocast else "cache_fp32"
        result[name], residual = _fit(rows, measured, ["per_pixel", "constant"])
        result[name]["fit_residual"] = round(residual, 4)
    return result


# --- Qwen2.5-VL ----------------------------------------------------------------------------------------

def qwen_parts(arch: Qwen2_5_VLArch, layers: int, vision_depth: int, lora_r: int = 64):
    """The language model and the vision tower of `arch` at reduced depth (bf16), trainable as in
    stage 1: LoRA on the language model's linear layers, the vision tower and merger in full."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (Qwen2_5_VisionTransformerPretrainedModel,
                                                                    Qwen2_5_VLTextModel)

    v = arch.vision
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=1024, hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=arch.num_attention_heads,
                         num_key_value_heads=arch.num_key_value_heads, bos_token_id=0, eos_token_id=1, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": mrope_section(arch.head_dim)}),
        vision_config=dict(depth=vision_depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                           num_heads=v.num_heads, out_hidden_size=v.out_hidden_size, window_size=v.window_size,
                           fullatt_block_indexes=[vision_depth - 1]))
    text = _seeded(lambda: Qwen2_5_VLTextModel._from_config(config.text_config, dtype=torch.bfloat16))
    text.requires_grad_(False)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    inject_adapter_in_model(LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=targets), text)
    vision = _seeded(lambda: Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config,
                                                                                    dtype=torch.bfloat16))
    return text.train(), vision.train()


def _set_checkpointing(model: torch.nn.Module, function) -> None:
    from transformers.modeling_layers import GradientCheckpointingLayer

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.gradient_checkpointing = function is not None
            module._gradient_checkpointing_func = function


def _vision_input(patches_side: int, config) -> tuple[torch.Tensor, torch.Tensor]:
    """One image of patches_side x patches_side patches (one temporal patch), as flat patch rows."""
    n = patches_side * patches_side
    pixels = torch.randn(n, 3 * config.temporal_patch_size * config.patch_size**2,
                         generator=torch.Generator().manual_seed(0))
    return pixels.to(torch.bfloat16), torch.tensor([[1, patches_side, patches_side]])


def qwen_run(part: str, model, size: int, checkpointing: bool | None) -> int:
    """checkpointing None: the no-grad peak; else the saved bytes of one training forward."""
    if part == "text":
        x = torch.randn(1, size, model.config.hidden_size, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
        call, inputs = (lambda: model(inputs_embeds=x, use_cache=False).last_hidden_state), [x]
    else:
        pixels, grid = _vision_input(size, model.config)
        call, inputs = (lambda: model(pixels, grid_thw=grid).pooler_output), [pixels, grid]
    if checkpointing is None:
        with torch.no_grad(), LiveBytes() as live, torch.autocast("cpu", dtype=torch.bfloat16):
            out = call()
            del out
        return live.peak
    with SavedBytes([*model.parameters(), *model.buffers(), *inputs]) as saved, \
            torch.autocast("cpu", dtype=torch.bfloat16):
        _set_checkpointing(model, saved.checkpoint_fn if checkpointing else None)
        out = call()
    _set_checkpointing(model, None)
    del out
    return saved.bytes


def measure_qwen(text_tokens: list[int], vision_sides: list[int], log=print, arch: Qwen2_5_VLArch = QWEN2_5_VL_3B) -> dict:
    """Language-model layer per token (LoRA r64) and vision block per patch (trained in full)."""
    result = {}
    for part, sizes, unit in (("text", text_tokens, "token"), ("vision", vision_sides, "patch")):
        rows, saved, kept, nograd = [], [], [], []
        for depth in (1, 2):
            text, vision = qwen_parts(arch, depth, depth)
            model = text if part == "text" else vision
            for size in sizes:
                n = size if part == "text" else size * size
                rows.append([depth * n, depth, n, 1])
                saved.append(qwen_run(part, model, size, False))
                kept.append(qwen_run(part, model, size, True))
                if depth == 2:
                    nograd.append(qwen_run(part, model, size, None))
                log(f"  {part}, {depth} layers, {n} {unit}{'es' if unit == 'patch' else 's'}: saved {saved[-1] / n / 1024:.1f} KB/{unit}, "
                    f"checkpointed {kept[-1] / n / 1024:.1f} KB/{unit}")
        names = [f"layer_per_{unit}", "layer_per_seq", f"fixed_per_{unit}", "fixed_per_seq"]
        peak_rows = [[row[2], 1] for row in rows if row[1] == 2]
        result[part] = {"saved": _fit(rows, saved, names)[0], "checkpointed": _fit(rows, kept, names)[0],
                        "nograd_peak": _fit(peak_rows, nograd, [f"per_{unit}", "per_seq"])[0]}
    return result


# --- ArcFace (IPRO's differentiable face reward) ---------------------------------------------------------

def measure_arcface(arch: str = "r100", crops: int = 2, log=print) -> dict:
    from identity_grpo.faces.iresnet import ARCHITECTURES, IResNet

    config = ARCHITECTURES[arch]
    model = _seeded(lambda: IResNet(config)).requires_grad_(False).eval()
    faces = torch.rand(crops, 3, config.input_size, config.input_size).requires_grad_(True)
    with SavedBytes([*model.parameters(), *model.buffers(), faces]) as saved:
        out = model.embed(faces)
    del out
    per_crop = saved.bytes / crops
    log(f"  ArcFace {arch}: {per_crop / 2**20:.1f} MiB per {config.input_size}px crop with gradients (fp32)")
    return {"params": sum(p.numel() for p in model.parameters()), "grad_per_crop": round(per_crop, 1)}


# Latent (frames, height, width) per token count: 1.3B at 256 / 512 / 1024 tokens, 14B at 128 / 256
# (its working sets at 512 / 1024).
MEASUREMENTS: dict[str, Callable[..., dict]] = {
    "wan_1.3b": lambda log: measure_wan(WAN_T2V_1_3B, [(1, 32, 32), (2, 32, 32), (4, 32, 32)], log),
    "vace_1.3b": lambda log: measure_wan(WAN_VACE_1_3B, [(1, 32, 32), (4, 32, 32)], log),
    "wan_14b_i2v": lambda log: measure_wan(WAN_I2V_14B, [(1, 16, 32), (2, 16, 32)], log,
                                           live_sizes=[(2, 32, 32), (4, 32, 32)]),
    "wan_14b": lambda log: measure_wan(WAN22_A14B_EXPERT, [(1, 16, 32), (2, 16, 32)], log,
                                       live_sizes=[(2, 32, 32), (4, 32, 32)]),
    "vae": lambda log: measure_vae([(2, 8, 8), (3, 8, 8), (2, 12, 12), (3, 12, 12)], log,
                                   nograd_sizes=[(3, 8, 8), (5, 8, 8), (3, 12, 12), (5, 12, 12)]),
    "vae_cache": lambda log: measure_vae_cache([(8, 8), (12, 16)], log),
    "qwen2.5_vl_3b": lambda log: measure_qwen([256, 1024], [16, 32], log),
    "arcface_r100": lambda log: measure_arcface("r100", log=log),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m identity_grpo.plan.measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(MEASUREMENTS), help="measure these, keep the rest of --out")
    parser.add_argument("--out", type=Path, default=COEFFICIENTS)
    args = parser.parse_args(argv)
    table = json.loads(args.out.read_text()) if args.out.is_file() else {}
    table.update(note=NOTE, command=COMMAND, precision="bf16 weights (fp32 norms, LoRA) under CPU bf16 autocast; "
                 "the VAE also in fp32", units="bytes", torch=torch.__version__)
    for name in args.only or list(MEASUREMENTS):
        print(f"{name}:", flush=True)
        started = time.perf_counter()
        table[name] = MEASUREMENTS[name](lambda line: print(line, flush=True))
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        args.out.write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
