"""The GRPO recipe's plan: sampling with log-probs, the update, decoding and scoring, evaluation."""
from __future__ import annotations

import math

from identity_grpo.plan import activations as act
from identity_grpo.plan.architectures import UMT5_XXL
from identity_grpo.plan.budget import DTYPE_BYTES, Item, Launch, Phase, Plan
from identity_grpo.plan.generators import (decode_item, eval_size, frames_bytes, fsdp_blocks, generator_of, generator_resident,
                                           lora_item, reward_models, scoring, stage2_assumptions)


def plan_grpo(path: str, cfg, launch: Launch, coef: dict) -> Plan:
    g, s, t = cfg.generator, cfg.sampling, cfg.train
    o = g.options
    gen = generator_of(g, launch.people)
    shards = launch.gpus if launch.sharding("grpo") == "fsdp" else 1
    arch = gen.trained
    tokens = act.wan_tokens(arch, o.height, o.width, o.num_frames, gen.reference_frames)
    eval_h, eval_w, eval_f = eval_size(s, o)
    eval_tokens = act.wan_tokens(arch, eval_h, eval_w, eval_f, gen.reference_frames)
    state = 4 + 4 + 8 + (4 if t.ema_decay > 0 else 0)
    resident = generator_resident(g, gen, shards) + reward_models(cfg.rewards, "rewards")
    resident.append(lora_item(cfg.lora, arch, shards, state, "grads + AdamW" + (" + EMA" if t.ema_decay > 0 else "")))

    # A sample's stored trajectory: every latent (float32) and its prompt + negative embeddings (+ VACE's control latents).
    local = math.ceil(t.samples_per_step / launch.gpus)
    latent = tokens * math.prod(arch.patch_size)  # latent positions of one channel
    per_sample = (s.train_steps + 1) * arch.out_channels * latent * 4 + 2 * 512 * UMT5_XXL.d_model * DTYPE_BYTES[g.dtype]
    if g.kind == "vace":
        per_sample += arch.vace_in_channels * latent * 4
    store = Item(f"rollouts kept for the update ({local} samples: {s.train_steps + 1} latents + prompt embeddings)",
                 local * per_sample, "train.prompts_per_step (samples per GPU per iteration)")
    fsdp = fsdp_blocks(arch, shards, g.dtype)
    sample_seqs = t.sample_batch_size * gen.branches
    train_seqs = t.train_batch_size * (gen.branches if t.cfg_in_training else 1)
    train = act.transformer_train(coef, arch, tokens, train_seqs, t.gradient_checkpointing)
    update_lever = "train.train_batch_size" if t.gradient_checkpointing else "train.gradient_checkpointing"
    phases = [
        Phase("sampling", [store, *fsdp, Item(
            f"no-grad forward ({t.sample_batch_size} samples x {gen.branches} guidance branches, {tokens} tokens)",
            act.transformer_nograd(coef, arch, tokens, sample_seqs), "train.sample_batch_size")]),
        Phase("update", [store, *fsdp, Item(
            f"forward kept for backward ({t.train_batch_size} x {train_seqs // t.train_batch_size} branches, {tokens} tokens, "
            f"checkpointing {'on' if t.gradient_checkpointing else 'off'})", train.kept, update_lever),
            Item("backward working set" + (" (one block recomputed)" if t.gradient_checkpointing else ""),
                 train.backward_extra, update_lever)]),
        Phase("decoding", [store, decode_item(g, coef, o.height, o.width, o.num_frames, t.sample_batch_size,
                                              "train.sample_batch_size")]),
        Phase("scoring", [store, Item("decoded clips", frames_bytes(t.sample_batch_size, o.num_frames, o.height, o.width),
                                      "train.sample_batch_size"),
                          *scoring(cfg.rewards, coef, o.height, o.width, o.num_frames, t.sample_batch_size, launch,
                                    "rewards")]),
        Phase("eval sampling", [*fsdp, Item(
            f"no-grad forward ({s.eval_batch_size} x {gen.branches} branches, {eval_tokens} tokens at "
            f"{eval_w}x{eval_h}x{eval_f})", act.transformer_nograd(coef, arch, eval_tokens, s.eval_batch_size * gen.branches),
            "sampling.eval_batch_size")]),
        Phase("eval decoding", [decode_item(g, coef, eval_h, eval_w, eval_f, s.eval_batch_size,
                                            "sampling.eval_batch_size")]),
    ]
    return Plan(path, "grpo", launch, resident, phases, stage2_assumptions(launch, shards, gen))
