"""The IPRO recipe's plan: no-grad steps, the graded steps + decoder + face reward with gradients, evaluation."""
from __future__ import annotations

from identity_grpo.ipro.decoder_frames import chunk_count
from identity_grpo.plan import activations as act
from identity_grpo.plan.budget import Item, Launch, Phase, Plan
from identity_grpo.plan.generators import (decode_item, eval_size, frames_bytes, fsdp_blocks, generator_of, generator_resident,
                                           lora_item, reward_models, scoring, stage2_assumptions)


def decoder_grad_span(num_frames: int, grad_frames: int) -> tuple[int, int]:
    """(latent chunks decoded with gradients, pixel frames the face reward scores): all of them
    (grad_frames 0 or every frame), else the trainer's draw (ipro/decoder_frames.py): ceil(k / 4)
    whole chunks per sample, 4 scored frames each (a chunk drawn twice is decoded once: at most this many)."""
    latent = (num_frames - 1) // act.VAE_TEMPORAL + 1
    if grad_frames in (0, num_frames):
        return latent, num_frames
    chunks = chunk_count(grad_frames, act.VAE_TEMPORAL)
    return chunks, act.VAE_TEMPORAL * chunks


def plan_ipro(path: str, cfg, launch: Launch, coef: dict) -> Plan:
    g, s, t = cfg.generator, cfg.sampling, cfg.train
    o = g.options
    gen = generator_of(g, launch.people)
    shards = launch.gpus if launch.sharding("ipro") == "fsdp" else 1
    sp = launch.sequence_parallel
    arch = gen.trained
    tokens = act.wan_tokens(arch, o.height, o.width, o.num_frames, gen.reference_frames)
    local = tokens / sp
    eval_h, eval_w, eval_f = eval_size(s, o)
    eval_tokens = act.wan_tokens(arch, eval_h, eval_w, eval_f, gen.reference_frames)
    arcface = coef["arcface_r100"]
    resident = generator_resident(g, gen, shards)
    resident.append(Item(f"ArcFace r100 ({arcface['params'] / 1e6:.0f}M, fp32)", arcface["params"] * 4,
                         "face_reward.arcface.arch"))
    resident += reward_models(cfg.eval_rewards, "eval_rewards")
    resident.append(lora_item(cfg.lora, arch, shards, 4 + 4 + 8, "grads + Adam"))

    seqs = t.micro_batch_size * gen.branches
    train = act.transformer_train(coef, arch, local, seqs, t.gradient_checkpointing)
    reference = act.transformer_nograd(coef, arch, local, seqs)
    if not t.gradient_checkpointing:
        steps_lever = "train.gradient_checkpointing"
    elif t.micro_batch_size > 1:
        steps_lever = "train.micro_batch_size"
    elif sp < launch.gpus:
        steps_lever = "train.sequence_parallel (--sequence-parallel): split each sample's tokens over more GPUs"
    else:
        steps_lever = "train.last_steps"
    latent_grad, grad_frames = decoder_grad_span(o.num_frames, t.decoder_grad_frames)
    autocast = t.mixed_precision != "no"
    subset = grad_frames < o.num_frames
    if subset:  # chunk by chunk, each sample in turn (generators/causal_decode.py)
        decoder = act.vae_decode_chunks(coef, o.height, o.width, t.micro_batch_size * latent_grad, autocast,
                                        t.decoder_checkpointing)
        decoder_label = (f"VAE decode with gradients ({latent_grad} drawn latent chunk(s) per sample, {grad_frames} frames"
                         f"{', each checkpointed with its causal context' if t.decoder_checkpointing else ''}")
    else:
        decoder = t.micro_batch_size * act.vae_decode_grad(coef, o.height, o.width, latent_grad, grad_frames, autocast)
        decoder_label = f"VAE decode with gradients ({grad_frames} frames = {latent_grad} latent frames"
    crops = t.micro_batch_size * grad_frames * launch.people
    frames_lever = "ipro decoder frames (train.decoder_grad_frames)"
    fsdp = fsdp_blocks(arch, shards, g.dtype)
    shape = f"{tokens} tokens" + (f" / {sp} GPUs" if sp > 1 else "")
    phases = [
        Phase("sampling", [*fsdp, Item(f"no-grad steps ({t.micro_batch_size} x {gen.branches} branches, {shape})",
                                       reference, steps_lever)]),
        Phase("update", [*fsdp, Item(
            f"{t.last_steps} graded steps kept for backward ({t.micro_batch_size} x {gen.branches} branches, {shape}, "
            f"checkpointing {'on' if t.gradient_checkpointing else 'off'})", t.last_steps * train.kept, steps_lever),
            Item("transformer working set (reference forward / backward)", max(reference, train.backward_extra),
                 steps_lever),
            Item(f"{decoder_label} of {o.width}x{o.height}{', bf16 autocast' if autocast else ''})", decoder, frames_lever),
            Item(f"ArcFace with gradients ({crops} face crops)", crops * arcface["grad_per_crop"], frames_lever)]),
        Phase("eval sampling", [*fsdp, Item(
            f"no-grad forward ({s.eval_batch_size} x {gen.branches} branches, {eval_tokens} tokens"
            f"{f' / {sp} GPUs' if sp > 1 else ''} at {eval_w}x{eval_h}x{eval_f})",
            act.transformer_nograd(coef, arch, eval_tokens / sp, s.eval_batch_size * gen.branches),
            "sampling.eval_batch_size")]),
        Phase("eval decoding", [decode_item(g, coef, eval_h, eval_w, eval_f, s.eval_batch_size, "sampling.eval_batch_size")]),
        Phase("eval scoring", [Item("decoded clip(s)", frames_bytes(s.eval_batch_size, eval_f, eval_h, eval_w),
                                    "sampling.eval_batch_size"),
                               *scoring(cfg.eval_rewards, coef, eval_h, eval_w, eval_f, s.eval_batch_size, launch,
                                         "eval_rewards")]),
    ]
    lines = stage2_assumptions(launch, shards, gen)
    if sp > 1:
        lines.append(f"sequence parallelism over {sp} GPUs: each holds 1/{sp} of a sample's tokens in the "
                     f"transformer ({launch.gpus // sp} data-parallel group(s))")
    lines.append(f"{launch.people} faces per frame; the face reward scores with gradients "
                 + (f"{grad_frames} of {o.num_frames} frames per sample ({latent_grad} latent chunk(s) drawn; "
                    "train.decoder_grad_frames)" if subset else f"all {o.num_frames} frames"))
    return Plan(path, "ipro", launch, resident, phases, lines)
