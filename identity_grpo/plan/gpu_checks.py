"""GPU checks: memory and numerics at the recipes' real shapes, random weights, nothing downloaded.

    python -m identity_grpo.plan.gpu_checks --out runs/gpu_checks.json   # one GPU (~5 min on an H200)
    python -m identity_grpo.plan.gpu_checks --tiny                       # the same at tiny sizes on a CPU

1. GRPO update memory at Wan2.1-VACE-1.3B shape (416x240x33 + 3 references, guidance: 2 branches),
   batch 1 / 2 / 4, transformer checkpointing off and on (one trained step: reference forward,
   policy forward, backward);
2. the on-policy log-ratio under bf16 at batch 4, recomputed in micro-batches of 4 and of 3 + 1
   (it must stay far below the clip range, 1e-3);
3. IPRO bytes per layer per graded step at the 14B block size (2, 3, 4 layers, 81x480x832, 2
   guidance branches, checkpointing on), scaled to 40 layers x 4 graded steps;
4. the VAE decoder with gradients (bf16 autocast, as IPRO decodes) on 1-3 latent frames at 480x832;
5. one Qwen2.5-VL-3B reward-model scoring forward and one training step (a pair, checkpointing, AdamW).

Memory is torch.cuda.max_memory_allocated above what was allocated before the step (on a CPU the
peak of live tensor bytes: identity_grpo.plan.counting.LiveBytes). Each figure sits beside the
planner's estimate for the same shape (not in --tiny mode: the coefficients are for the real
widths), so the JSON is what recalibrates the planner's coefficients.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from identity_grpo.finetune.lora import adapter_disabled
from identity_grpo.finetune.sampling import recompute_log_prob, sample_with_log_probs
from identity_grpo.finetune.sde import NoiseSchedule
from identity_grpo.generators.base import Conditions
from identity_grpo.generators.tiny import TinyWanConfig, tiny_text_encoder, tiny_tokenizer
from identity_grpo.generators.vace import VaceGenerator, VaceOptions
from identity_grpo.generators.causal_decode import decode_frames
from identity_grpo.plan import activations as act
from identity_grpo.plan.architectures import (QWEN2_5_VL_3B, WAN22_A14B_EXPERT, WAN_VACE_1_3B, WAN_VAE,
                                              WanTransformerArch, WanVaeArch)
from identity_grpo.plan.counting import LiveBytes
from identity_grpo.plan.measure import reduced, vae_model, wan_inputs, wan_model

GB = 1e9
CLIP_RANGE = 1e-3


@dataclass(frozen=True)
class Sizes:
    vace: WanTransformerArch
    vace_options: VaceOptions
    references: int
    ipro: WanTransformerArch  # cut to 2-4 layers
    ipro_latent: tuple[int, int, int]  # latent frames, height, width of one IPRO sample
    vae: WanVaeArch  # the generator's VAE; its decoder is check 4
    qwen: dict | None  # reward_model.tiny sizes; None: Qwen2.5-VL-3B
    frame: tuple[int, int]  # reward model: clip frame height, width
    reference: int  # reward model: square reference side


REAL = Sizes(WAN_VACE_1_3B, VaceOptions(height=240, width=416, num_frames=33), 3, WAN22_A14B_EXPERT, (21, 60, 104),
             WAN_VAE, None, (480, 832), 448)
_TINY_WAN = WanTransformerArch(num_layers=2, num_attention_heads=2, attention_head_dim=12, ffn_dim=32, in_channels=4,
                               out_channels=4, text_dim=32, freq_dim=32)
TINY = Sizes(dataclasses.replace(_TINY_WAN, vace_layers=(0,), vace_in_channels=72),  # 2 z + 8 x 8 mask channels
             VaceOptions(height=32, width=32, num_frames=5), 2, dataclasses.replace(_TINY_WAN, in_channels=12),
             (2, 4, 4), WanVaeArch(base_dim=8, z_dim=4, dim_mult=(1, 1, 1, 1), num_res_blocks=1),
             dict(hidden=64, layers=2, heads=4, intermediate=128, vision_depth=2, vision_hidden=32, vision_heads=2,
                  vision_intermediate=64, patch_size=14, window_size=56), (56, 56), 56)


class Meter:
    """with Meter(device) as m: ... m.now() -> bytes allocated above the entry; m.peak after the block."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._live = device, 0.0, LiveBytes() if device.type != "cuda" else None

    def __enter__(self) -> "Meter":
        if self._live is not None:
            self._live.__enter__()
        else:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        return self

    def now(self) -> float:
        return float(self._live.current if self._live is not None else torch.cuda.memory_allocated(self.device) - self._base)

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self.peak = float(self._live.peak)
        else:
            torch.cuda.synchronize()
            self.peak = float(torch.cuda.max_memory_allocated(self.device) - self._base)


def measured_peak(device: torch.device, step) -> float | str:
    """GB at the peak of step(), or "out of memory" (the recipe shape can exceed one GPU: that is a finding)."""
    try:
        with Meter(device) as meter:
            step()
        return meter.peak / GB
    except RuntimeError as error:
        if "out of memory" not in str(error):
            raise
        return "out of memory"
    finally:
        if device.type == "cuda":  # hand a failed step's memory back before the next shape
            gc.collect()
            torch.cuda.empty_cache()


def vace_generator(sizes: Sizes, device: torch.device) -> VaceGenerator:
    """VACE over a random transformer (LoRA attached) and VAE; the conditions are made directly, so
    the text encoder is a tiny stand-in that never runs."""
    return VaceGenerator.from_components(wan_model(sizes.vace), vae_model(sizes.vae),
                                         tiny_text_encoder(TinyWanConfig()), tiny_tokenizer(), sizes.vace_options, device)


def vace_conditions(gen: VaceGenerator, sizes: Sizes, batch: int, device: torch.device) -> Conditions:
    o, arch = sizes.vace_options, sizes.vace
    g = torch.Generator().manual_seed(0)
    frames, h, w = gen.latent_frames + sizes.references, o.height // 8, o.width // 8
    text = torch.randn(batch, 512, arch.text_dim, generator=g).to(torch.bfloat16)
    control = torch.randn(batch, arch.vace_in_channels, frames, h, w, generator=g)
    tensors = {"prompt_embeds": text, "negative_prompt_embeds": torch.zeros_like(text), "control_latents": control}
    return Conditions({k: v.to(device) for k, v in tensors.items()}, [f"prompt {i}" for i in range(batch)])


def check_grpo_update(gen: VaceGenerator, sizes: Sizes, device: torch.device, coef: dict | None) -> list[dict]:
    schedule, sigmas = NoiseSchedule(kind="flow_grpo", eta=0.7), gen.sigmas(25)
    rows = []
    for checkpointing in (False, True):
        if checkpointing:
            gen.transformer.enable_gradient_checkpointing()
        for batch in (1, 2, 4):
            conds = vace_conditions(gen, sizes, batch, device)
            x = gen.initial_noise(conds, torch.Generator().manual_seed(batch))
            x_next = x + 0.01 * torch.randn_like(x)

            def trained_step():  # as GRPO's update: the reference (adapter off, no grad), then the policy
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    with torch.no_grad(), adapter_disabled(gen.transformer):
                        recompute_log_prob(gen, conds, x, x_next, sigmas[10], sigmas[11], schedule)
                    step = recompute_log_prob(gen, conds, x, x_next, sigmas[10], sigmas[11], schedule)
                    step.log_prob.sum().backward()

            tokens = act.wan_tokens(sizes.vace, sizes.vace_options.height, sizes.vace_options.width,
                                    sizes.vace_options.num_frames, sizes.references)
            row = {"batch": batch, "checkpointing": checkpointing, "tokens": tokens,
                   "peak_gb": measured_peak(device, trained_step)}
            gen.transformer.zero_grad(set_to_none=True)
            if coef:
                row["planner_gb"] = act.transformer_train(coef, sizes.vace, tokens, 2 * batch, checkpointing).peak / GB
            rows.append(row)
    return rows


def check_onpolicy(gen: VaceGenerator, sizes: Sizes, device: torch.device) -> list[dict]:
    schedule = NoiseSchedule(kind="flow_grpo", eta=0.7)
    sigmas = gen.sigmas(25)[:4]  # three stochastic steps show any dependence on the batch layout
    conds = vace_conditions(gen, sizes, 4, device)
    rows = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        trajectory = sample_with_log_probs(gen, conds, sigmas, schedule, torch.Generator().manual_seed(0))
        for parts in ([[0, 1, 2, 3]], [[0, 1, 2], [3]]):
            worst = 0.0
            for step in range(sigmas.numel() - 1):
                for part in parts:
                    index = torch.tensor(part)
                    new = recompute_log_prob(gen, conds.select(index), trajectory.latents[index, step],
                                             trajectory.latents[index, step + 1], sigmas[step], sigmas[step + 1], schedule)
                    old = trajectory.log_probs[index, step].to(new.log_prob.device)
                    worst = max(worst, float((new.log_prob - old).abs().max()))
            rows.append({"micro_batches": "+".join(str(len(p)) for p in parts), "max_abs_log_ratio": worst,
                         "clip_range": CLIP_RANGE, "well_under": worst < 0.1 * CLIP_RANGE})
    return rows


def check_ipro_layers(sizes: Sizes, device: torch.device, coef: dict | None) -> list[dict]:
    frames, h, w = sizes.ipro_latent
    tokens = frames * (h // 2) * (w // 2)
    rows = []
    for layers in (2, 3, 4):
        model = wan_model(reduced(sizes.ipro, layers)).to(device)
        model.enable_gradient_checkpointing()
        inputs = {k: v.to(device) for k, v in wan_inputs(sizes.ipro, frames, h, w, batch=2).items()}
        inputs["hidden_states"].requires_grad_(True)  # graded steps chain: the latents carry gradients
        with Meter(device) as m, torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(**inputs, return_dict=False)[0]
            kept = m.now()
            out.float().square().mean().backward()
        rows.append({"layers": layers, "tokens": tokens, "kept_gb": kept / GB, "peak_gb": m.peak / GB})
        del model, out, inputs
        gc.collect()
    per_layer = (rows[-1]["kept_gb"] - rows[0]["kept_gb"]) / (rows[-1]["layers"] - rows[0]["layers"])
    for row in rows:
        row["kept_per_layer_gb"] = per_layer
        row["scaled_40_layers_x_4_steps_gb"] = 4 * 40 * per_layer
        if coef:
            c = coef["wan_14b"]["checkpointed"]
            row["planner_per_layer_gb"] = 2 * (c["block_per_token"] * tokens + c["block_per_seq"]) / GB
    return rows


def check_vae(sizes: Sizes, device: torch.device, coef: dict | None) -> list[dict]:
    vae = vae_model(sizes.vae).to(device)
    h, w = sizes.ipro_latent[1:]
    rows = []
    for latent_frames in (1, 2, 3):
        z = torch.randn(1, sizes.vae.z_dim, latent_frames, h, w, device=device, requires_grad=True)
        pixel_frames = 1 + 4 * (latent_frames - 1)

        def decode_step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                vae.decode(z, return_dict=False)[0].float().square().mean().backward()

        row = {"latent_frames": latent_frames, "pixel_frames": pixel_frames, "peak_gb": measured_peak(device, decode_step)}
        if isinstance(row["peak_gb"], float):
            row["kb_per_pixel_frame"] = row["peak_gb"] * GB / (pixel_frames * h * w * 64) / 1024
        if coef:
            row["planner_gb"] = act.vae_decode_grad(coef, h * 8, w * 8, latent_frames, pixel_frames, True) / GB
        rows.append(row)
    # IPRO's train.decoder_grad_frames: the last 1 or 2 of 3 latent chunks decoded with gradients, checkpointed.
    for chunks in (1, 2):
        z = torch.randn(1, sizes.vae.z_dim, 3, h, w, device=device, requires_grad=True)
        frames = torch.tensor([list(range(9 - 4 * chunks, 9))])

        def chunked_step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                decode_frames(vae, z, frames, 4, checkpointed=True).float().square().mean().backward()

        row = {"latent_frames": 3, "graded_chunks": chunks, "peak_gb": measured_peak(device, chunked_step)}
        if coef and "vae_cache" in coef:
            row["planner_gb"] = act.vae_decode_chunks(coef, h * 8, w * 8, chunks, True, True) / GB
        rows.append(row)
    return rows


def reward_model(sizes: Sizes, device: torch.device):
    """The stage-1 model at `sizes` (random bf16 weights, LoRA r64, checkpointing) with a word-level tokenizer:
    the vocabulary only needs the template's words and the reward token."""
    from tokenizers import AddedToken
    from transformers import Qwen2_5_VLForConditionalGeneration

    from reward_model.model import RewardModel, RewardModelConfig, add_lora, enable_gradient_checkpointing
    from reward_model.tiny import build_word_tokenizer, tiny_qwen2_5_vl_config
    from reward_model.vision_inputs import VisionSpec

    config = RewardModelConfig(backbone="tiny", torch_dtype="bfloat16", gradient_checkpointing=True,
                               max_pixels=sizes.frame[0] * sizes.frame[1], reference_max_pixels=sizes.reference**2)
    tokenizer = build_word_tokenizer(config.prompt.vocabulary())
    tokenizer.add_tokens([AddedToken(config.reward_token, special=True, normalized=False)], special_tokens=True)
    qwen = tiny_qwen2_5_vl_config(1024, **sizes.qwen) if sizes.qwen else _qwen_3b_config()
    with torch.device(device):
        backbone = Qwen2_5_VLForConditionalGeneration._from_config(qwen, dtype=torch.bfloat16, attn_implementation="sdpa")
    add_lora(backbone, config)
    vision = VisionSpec.from_model_config(qwen, min_pixels=56 * 56, max_pixels=config.max_pixels)
    model = RewardModel(backbone, tokenizer, vision, config).to(device)
    model.set_trainable()
    enable_gradient_checkpointing(backbone)
    return model


def _qwen_3b_config():
    from transformers import Qwen2_5_VLConfig

    a, v = QWEN2_5_VL_3B, QWEN2_5_VL_3B.vision
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
                         num_hidden_layers=a.num_hidden_layers, num_attention_heads=a.num_attention_heads,
                         num_key_value_heads=a.num_key_value_heads),
        vision_config=dict(depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                           num_heads=v.num_heads, out_hidden_size=v.out_hidden_size, window_size=v.window_size,
                           fullatt_block_indexes=list(v.fullatt_block_indexes)),
        tie_word_embeddings=a.tie_word_embeddings)


def check_reward_model(sizes: Sizes, device: torch.device, coef: dict | None) -> list[dict]:
    from reward_model.losses import A_PREFERRED, bt_ties_loss

    model = reward_model(sizes, device)
    g = np.random.default_rng(0)
    clips = [g.integers(0, 255, (8, *sizes.frame, 3), dtype=np.uint8) for _ in range(2)]
    refs = [[g.integers(0, 255, (sizes.reference, sizes.reference, 3), dtype=np.uint8) for _ in range(3)]] * 2
    batch = model.processor(clips, refs, ["two people talk in a kitchen"] * 2).to(device)
    sample = act.RewardInput(tokens=int(batch.input_ids.shape[1]),
                             patches=(batch.pixel_values.shape[0] + batch.pixel_values_videos.shape[0]) // 2)
    model.eval()
    with Meter(device) as m, torch.no_grad():
        model(batch)
    rows = [{"step": "scoring, 2 clips", "tokens": sample.tokens, "patches": sample.patches, "peak_gb": m.peak / GB}]
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-6)
    with Meter(device) as m:
        rewards = model(batch)
        loss, _ = bt_ties_loss(rewards[:1], rewards[1:], torch.tensor([A_PREFERRED], device=device))
        loss.backward()
        optimizer.step()
    rows.append({"step": "training, 1 pair (with AdamW's first step)", "tokens": sample.tokens,
                 "patches": sample.patches, "peak_gb": m.peak / GB})
    if coef:
        rows[0]["planner_gb"] = act.qwen_nograd(coef, sample, 2) / GB
        rows[1]["planner_gb"] = act.qwen_train(coef, QWEN2_5_VL_3B, sample, 2, True).peak / GB
    return rows


def run_checks(tiny: bool, device: torch.device, log=print) -> dict:
    sizes, coef = (TINY, None) if tiny else (REAL, act.load_coefficients())
    gen = vace_generator(sizes, device)  # checks 1 and 2
    checks = {
        "1_grpo_update_memory": lambda: check_grpo_update(gen, sizes, device, coef),
        "2_onpolicy_log_ratio_bf16": lambda: check_onpolicy(gen, sizes, device),
        "3_ipro_bytes_per_layer": lambda: check_ipro_layers(sizes, device, coef),
        "4_vae_decode_with_gradients": lambda: check_vae(sizes, device, coef),
        "5_reward_model_step": lambda: check_reward_model(sizes, device, coef),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"device": name, "mode": "tiny" if tiny else "real shapes", "torch": torch.__version__, "checks": {}}
    for key, check in checks.items():
        started = time.perf_counter()
        results["checks"][key] = check()
        log(f"{key} ({time.perf_counter() - started:.0f} s)")
        log(table(results["checks"][key]))
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
    return results


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[f"{row.get(k, ''):.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
             for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join("  " + line for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m identity_grpo.plan.gpu_checks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU (seconds): checks the script itself")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_checks.json"))
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_checks: no GPU here; run with --tiny to check the script on the CPU")
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    threads = torch.get_num_threads()
    if args.tiny:
        torch.set_num_threads(1)  # tiny tensors gain nothing from threads, and threads waiting on a busy core cost seconds
    try:
        results = run_checks(args.tiny, device)
    finally:
        torch.set_num_threads(threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
