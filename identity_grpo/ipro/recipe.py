"""The reward-gradient (IPRO) training loop: backpropagate a differentiable face reward through the
decoder and the last K denoising steps into the generator's LoRA.

    per step, per micro-batch: noise -> Euler ODE (earlier steps no_grad, last K with grad, KL to
    the adapter-off velocity) -> decode (checkpointed) -> face reward vs each person's pool ->
    loss = reward_weight * (-reward) + kl_weight * KL -> backward; then one Adam step
    evaluation, checkpoints, resume and the sample grids are GRPO's (identity_grpo/grpo/recipe.py)

    metrics = train_ipro(cfg, generator=None, face_reward=None, evaluate_fn=None, eval_reward_fns=None)

Hooks as train_grpo's: a ready `generator` (on the accelerator's device), a `face_reward`
(videos, records -> [B] with gradients), `evaluate_fn` (extra per-sample evaluation metrics) and
`eval_reward_fns` ({name: fn} for the configured eval_rewards).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate.utils import set_seed
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from identity_grpo.generators.base import Generator
from identity_grpo.ipro.config import IproConfig
from identity_grpo.generators.base import at_resolution
from identity_grpo.generators.factory import build_generator
from identity_grpo.ipro.last_steps import sample_last_steps
from identity_grpo.finetune.lora import LoraCheckpoint, attach_lora, export_lora, loading_instructions
from identity_grpo.finetune.batches import GroupSampler, sampling_batches
from identity_grpo.core.prompt_manifest import PromptRecord
from identity_grpo.core.seeds import mix_seed
from identity_grpo.rewards.registry import WeightedRewards
from identity_grpo.grpo.recipe import (EvalBatch, EvaluateFn, Run, evaluate, load_prompts, make_accelerator, save_checkpoint,
                                   wrap_up)
from identity_grpo.grpo.update import Policy, average_gradients
from identity_grpo.core.checkpointing import load_training_state
from identity_grpo.core.config_io import save_config, to_dict
from identity_grpo.core.hub import prepare_upload, push_folder
from identity_grpo.core.tracking import RunLogger

FaceReward = Callable[[torch.Tensor, Sequence[PromptRecord]], torch.Tensor]


@dataclass
class IproRun:
    run: Run  # what GRPO's evaluate / save_checkpoint read (run.cfg is the IproConfig)
    face_reward: FaceReward


def train_ipro(cfg: IproConfig, generator: Generator | None = None, face_reward: FaceReward | None = None,
               evaluate_fn: EvaluateFn | None = None, eval_reward_fns=None) -> dict:
    """Train, evaluate before and after, save, publish; returns what metrics.json holds."""
    ipro = setup(cfg, generator, face_reward, evaluate_fn, eval_reward_fns)
    run = ipro.run
    meta = (load_training_state(run.accelerator, cfg.output_dir) if cfg.resume else None) or {"step": 0}
    if run.eval_records and "eval_before" not in meta:
        meta["eval_before"] = evaluate(run, step=0)
    started = time.perf_counter()
    progress = tqdm(total=cfg.train.num_steps, initial=meta["step"], desc="IPRO",
                    disable=not run.accelerator.is_local_main_process)
    while meta["step"] < cfg.train.num_steps:
        logged = train_step(ipro, meta["step"])
        meta["step"] += 1
        meta["last_kl"] = logged["train/kl"]
        run.logger.log(logged, step=meta["step"])
        progress.update(1)
        progress.set_postfix(reward=f"{logged['train/reward']:.3f}", kl=f"{logged['train/kl']:.2e}")
        t = cfg.train
        if t.eval_every and meta["step"] % t.eval_every == 0 and meta["step"] < t.num_steps and run.eval_records:
            evaluate(run, meta["step"])
        if (t.save_every and meta["step"] % t.save_every == 0) or meta["step"] == t.num_steps:
            save_checkpoint(run, meta)
    progress.close()
    return wrap_up(run, meta, time.perf_counter() - started, finish)


def train_step(ipro: IproRun, step: int) -> dict[str, float]:
    """One optimizer step over train.batch_size samples (all processes), accumulated over micro-batches."""
    run, t = ipro.run, ipro.run.cfg.train
    accelerator, gen, policy = run.accelerator, run.generator, run.policy
    rng = torch.Generator().manual_seed(mix_seed(t.seed, step, accelerator.process_index, 6))
    sigmas = gen.sigmas(run.cfg.sampling.train_steps)
    counts = [len(r.references) for r in run.train_records]
    sums = torch.zeros(3, device=accelerator.device)  # reward, KL, loss, summed over samples
    step_kl = torch.zeros(t.last_steps, device=accelerator.device)
    started = time.perf_counter()
    policy.transformer.train()
    for batch in sampling_batches(run.sampler.slots(step), counts, t.micro_batch_size):
        records = [run.train_records[slot.prompt_index] for slot in batch]
        with torch.no_grad():
            conds = gen.encode_conditions([r.prompt for r in records], [r.load_references() for r in records])
        noise = gen.initial_noise(conds, rng)
        with accelerator.autocast():
            sample = sample_last_steps(gen, policy.transformer, conds, noise, sigmas, t.last_steps,
                                       t.step_weights(), with_kl=t.kl_weight > 0)
            videos = decode(gen, sample.latents, t.decoder_checkpointing)
        reward = ipro.face_reward(videos, records).to(accelerator.device)
        losses = t.reward_weight * -reward + t.kl_weight * sample.kl
        accelerator.backward(losses.sum() / t.batch_size)  # the mean over the whole step's samples
        sums += torch.stack([reward.sum(), sample.kl.sum(), losses.sum()]).detach()
        step_kl += sample.step_kl.sum(dim=0)
    policy.transformer.eval()
    average_gradients(accelerator, policy.params)  # summed over processes: each loss was already / batch_size
    grad_norm = accelerator.clip_grad_norm_(policy.params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
    policy.optimizer.step()
    policy.optimizer.zero_grad(set_to_none=True)
    sums = accelerator.reduce(sums, "sum") / t.batch_size
    step_kl = accelerator.reduce(step_kl, "sum") / t.batch_size
    logged = {"train/reward": float(sums[0]), "train/kl": float(sums[1]), "train/loss": float(sums[2]),
              "train/grad_norm": float(grad_norm), "time/step": time.perf_counter() - started}
    logged.update({f"train/kl_step_{k}": float(v) for k, v in enumerate(step_kl)})
    return logged


def decode(generator: Generator, latents: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """frames [B, T, H, W, 3]; checkpointed: the decoder's activations are recomputed in backward
    (a video decoder's activations are the largest tensors of the whole step)."""
    if checkpointed and torch.is_grad_enabled() and latents.requires_grad:
        return checkpoint(generator.decode, latents, use_reentrant=False)
    return generator.decode(latents)


def setup(cfg: IproConfig, generator: Generator | None, face_reward: FaceReward | None,
          evaluate_fn: EvaluateFn | None, eval_reward_fns) -> IproRun:
    cfg.validate_inputs(generator is not None, face_reward is not None, eval_reward_fns is not None)
    accelerator = make_accelerator(cfg)
    cfg.validate_processes(accelerator.num_processes)
    set_seed(cfg.train.seed)  # before the LoRA is attached: its initial values follow the seed
    train_records, eval_records, evaluate_fn = load_prompts(cfg.data, accelerator, evaluate_fn)
    if generator is None:
        generator = build_generator(cfg.generator, accelerator.device)
    if face_reward is None:
        face_reward = build_face_reward(cfg, accelerator.device)
    transformer = generator.trainable_module()
    params = attach_lora(transformer, cfg.lora)
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.eval()
    t = cfg.train
    optimizer = accelerator.prepare(torch.optim.Adam(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay))
    accelerator.register_for_checkpointing(LoraCheckpoint(transformer))
    s = cfg.sampling
    run = Run(
        cfg=cfg, accelerator=accelerator, generator=generator,
        eval_generator=at_resolution(generator, s.eval_height, s.eval_width, s.eval_num_frames),
        policy=Policy(generator, transformer, params, optimizer, ema=None),
        rewards=WeightedRewards.from_config(cfg.eval_rewards, accelerator.device, eval_reward_fns),
        sampler=GroupSampler(len(train_records), 1, t.batch_size, accelerator.num_processes,
                             accelerator.process_index, t.seed),
        train_records=train_records, eval_records=eval_records,
        evaluate_fn=with_face_reward(face_reward, evaluate_fn),
        logger=RunLogger(cfg.output_dir, cfg.wandb.project, cfg.wandb.mode, to_dict(cfg), cfg.wandb.run_name,
                         enabled=accelerator.is_main_process),
    )
    return IproRun(run, face_reward)


def build_face_reward(cfg: IproConfig, device: torch.device) -> FaceReward:
    f = cfg.face_reward
    if f.kind == "world":
        from identity_grpo.world.face_models import world_face_reward

        return world_face_reward(f.world, device)
    from identity_grpo.ipro.face_reward import arcface_face_reward

    return arcface_face_reward(f.arcface, device)


def with_face_reward(face_reward: FaceReward, hook: EvaluateFn | None) -> EvaluateFn:
    """The evaluation hook: the training reward as eval/face_reward, then the caller's metrics."""
    def metrics(batch: EvalBatch) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            values = {"face_reward": face_reward(batch.videos.float(), batch.records).detach().cpu()}
        if hook is not None:
            values.update(hook(batch))
        return values

    return metrics


def finish(run: Run, metrics: dict) -> None:
    """output_dir/final: the LoRA (diffusers naming), the config, metrics; metrics.json; Hub upload."""
    cfg, accelerator = run.cfg, run.accelerator
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        final_dir = output_dir / "final"
        export_lora(run.policy.transformer, final_dir, run.generator.trainable_module_name())
        save_config(cfg, final_dir / "ipro_config.yaml")
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if cfg.hub.push:
            flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            summary = (f"A LoRA for `{cfg.generator.pretrained}` ({cfg.generator.kind}) trained with IPRO's reward "
                       "gradients (a differentiable face-identity reward through the last denoising steps) to keep "
                       f"every person's identity (identity-grpo). {loading_instructions(final_dir)}")
            prepare_upload(final_dir, "Identity-preserving LoRA (IPRO)", summary, flat, to_dict(cfg),
                           ["lora", "video", "ipro", "wan"])
            print(f"pushed {final_dir} to {push_folder(final_dir, cfg.hub.repo_id, private=cfg.hub.private, commit_message='ipro LoRA')}")
    accelerator.wait_for_everyone()
