"""The stage-1 recipe's plan: Qwen2.5-VL-3B trained on pairs under DeepSpeed ZeRO-2."""
from __future__ import annotations

import json
from pathlib import Path

from identity_grpo.plan import activations as act
from identity_grpo.plan.architectures import QWEN2_5_VL_3B
from identity_grpo.plan.budget import DTYPE_BYTES, Item, Launch, Phase, Plan, PlanError

ZERO2 = Path(__file__).resolve().parents[2] / "launch" / "deepspeed" / "zero2.json"


def plan_reward(path: str, cfg, launch: Launch, coef: dict) -> Plan:
    m, t = cfg.model, cfg.train
    if "3b" not in m.backbone.lower():
        raise PlanError(f"model.backbone {m.backbone!r}: the planner sizes the published backbone "
                        "(Qwen/Qwen2.5-VL-3B-Instruct) only")
    arch = QWEN2_5_VL_3B
    dtype = DTYPE_BYTES[m.torch_dtype]
    zero = launch.sharding("reward") == "zero2"
    shards = launch.gpus if zero else 1
    lora = arch.lora_params(m.lora_r) if m.lora_r else arch.language_params()
    merger = arch.vision.merger_params()
    trainable = lora + (arch.vision.params() - merger if m.train_vision_tower else 0)
    trainable += (merger if m.train_merger else 0) + 2 * arch.hidden_size  # + reward embedding and head
    weights = arch.params() + (arch.lora_params(m.lora_r) if m.lora_r else 0)
    note = f", ZeRO-2 / {shards}" if zero else ""
    resident = [
        Item(f"Qwen2.5-VL-3B + LoRA r{m.lora_r} weights ({weights / 1e9:.2f}B, {m.torch_dtype}, replicated)",
             weights * dtype, "ZeRO-3 (parameters sharded), not modelled"),
        Item(f"gradients of the {trainable / 1e9:.2f}B trainable ({m.torch_dtype}{note})", trainable * dtype / shards,
             "ZeRO sharding (--shard zero2) / more --gpus"),
        # DeepSpeed's bf16 mode keeps fp32 master weights and moments; torch's AdamW keeps moments in the weights' dtype.
        Item(f"AdamW: fp32 master weights + 2 moments{note}" if zero else f"AdamW: 2 moments ({m.torch_dtype})",
             trainable * (12 if zero else 2 * dtype) / shards, "ZeRO sharding (--shard zero2) / more --gpus"),
    ]
    if zero:
        z = json.loads(ZERO2.read_text())["zero_optimization"]
        buckets = (float(z.get("reduce_bucket_size", 5e8)) + float(z.get("allgather_bucket_size", 5e8))) * dtype
        resident.append(Item("DeepSpeed reduce + all-gather buckets (launch/deepspeed/zero2.json)", buckets,
                             "reduce_bucket_size / allgather_bucket_size in launch/deepspeed/zero2.json"))
    height, width = 480, 832
    sample = act.reward_input(height, width, m.num_frames, m.max_pixels, m.reference_max_pixels, launch.people,
                              launch.reward_text_tokens)
    seqs = 2 * t.batch_size  # both clips of every pair
    train = act.qwen_train(coef, arch, sample, seqs, m.gradient_checkpointing)
    lever = "train.batch_size" if m.gradient_checkpointing else "model.gradient_checkpointing"
    shape = f"{t.batch_size} pairs = {seqs} clips x {sample.tokens} tokens / {sample.patches} patches"
    phases = [
        Phase("training", [Item(f"forward kept for backward ({shape}, checkpointing "
                                f"{'on' if m.gradient_checkpointing else 'off'})", train.kept, lever),
                           Item("backward working set" + (" (one layer recomputed)" if m.gradient_checkpointing else ""),
                                train.backward_extra, lever)]),
        Phase("evaluation scoring", [Item(f"no-grad forward ({seqs} clips)", act.qwen_nograd(coef, sample, seqs),
                                          "train.batch_size")]),
    ]
    lines = [f"{launch.gpus} GPUs x {launch.gpu_memory:g} GB, {launch.reserve:g} GB kept free per GPU",
             ("DeepSpeed ZeRO-2: gradients and optimizer states sharded, weights replicated" if zero else
              "no ZeRO: every GPU holds all gradients and optimizer states"),
             f"clips at {width}x{height} resized to the model's pixel budget, {m.num_frames} frames; {launch.people} "
             f"square references; {launch.reward_text_tokens} text tokens (--people)"]
    return Plan(path, "reward", launch, resident, phases, lines)
