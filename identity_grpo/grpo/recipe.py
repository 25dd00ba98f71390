"""Stage-2 training loop (plain accelerate): GRPO on a LoRA of a VACE / Phantom generator.

    per iteration: sample groups with the SDE (log-probs recorded) -> decode -> score ->
    group advantages (gathered over processes) -> clipped policy update + KL (update.py) -> EMA
    every eval_every: ODE samples of held-out prompts with the EMA weights -> mean rewards
    every save_every: accelerate state + EMA + step, and the exported LoRA

    metrics = train_grpo(cfg, generator=None, reward_fns=None, evaluate_fn=None)

Hooks for callers that bring their own parts: `generator` (any object with the Generator protocol
whose trainable module is a diffusers model, on the accelerator's device), `reward_fns` ({name:
fn} for the configured reward names; weights still come from the config), `evaluate_fn` (extra
per-sample evaluation metrics, e.g. the synthetic world's independent identity measure).
"""
from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, gather_object, set_seed
from tqdm.auto import tqdm

from identity_grpo.grpo.advantages import gather_for_advantages
from identity_grpo.finetune.config import DataConfig
from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.finetune.ema import ParameterEMA
from identity_grpo.generators.base import at_resolution
from identity_grpo.generators.factory import build_generator
from identity_grpo.generators.base import Generator
from identity_grpo.finetune.lora import LoraCheckpoint, attach_lora, export_lora, loading_instructions
from identity_grpo.finetune.batches import GroupSampler, SampleSlot, sampling_batches
from identity_grpo.core.prompt_manifest import PromptRecord, load_prompt_manifest
from identity_grpo.core.seeds import mix_seed
from identity_grpo.rewards.registry import RewardFn, WeightedRewards
from identity_grpo.finetune.rollout import Rollout
from identity_grpo.finetune.run_metrics import summarize, summary_table
from identity_grpo.finetune.sample_grid import sample_grid, save_grid
from identity_grpo.finetune.sampling import sample_with_log_probs
from identity_grpo.grpo.sde_window import WindowedNoiseSchedule, draw_window_start
from identity_grpo.world.prompt_manifests import world_identity_metrics, write_world_manifests
from identity_grpo.grpo.update import Policy, update_phase
from identity_grpo.core.checkpointing import load_training_state, save_training_state
from identity_grpo.core.config_io import save_config, to_dict
from identity_grpo.core.hub import prepare_upload, push_folder
from identity_grpo.core.tracking import RunLogger


@dataclass
class EvalBatch:
    """One evaluation batch, as an `evaluate_fn` hook sees it (on the process that generated it)."""

    videos: torch.Tensor  # [B, F, H, W, 3] float in [0, 1], generated with the EMA weights
    records: list[PromptRecord]  # the B prompts, their references and extra manifest fields
    reward: torch.Tensor  # [B] the weighted total of the configured rewards
    rewards: dict[str, torch.Tensor]  # name -> [B], each configured reward
    step: int  # GRPO iterations done


# Per-sample metrics {name: [B]}; the trainer averages them over all held-out prompts.
EvaluateFn = Callable[[EvalBatch], dict[str, torch.Tensor]]


@dataclass
class Run:
    """What the phases share."""

    cfg: GrpoConfig
    accelerator: Accelerator
    generator: Generator  # sampling view (guidance as configured)
    eval_generator: Generator  # the same modules at the evaluation resolution
    policy: Policy
    rewards: WeightedRewards
    sampler: GroupSampler
    train_records: list[PromptRecord]
    eval_records: list[PromptRecord]
    evaluate_fn: EvaluateFn | None
    logger: RunLogger


def make_accelerator(cfg: GrpoConfig) -> Accelerator:
    # Several CPU processes need gloo named explicitly; GPUs use NCCL, one process needs no group.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs = [InitProcessGroupKwargs(backend="gloo")] if several and not torch.cuda.is_available() else []
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, kwargs_handlers=kwargs, cpu=not torch.cuda.is_available())
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ValueError(
            "train_grpo: launch without DeepSpeed/FSDP (plain multi-GPU): the LoRA's gradients are averaged "
            "by hand over processes, and its optimizer state is too small to be worth sharding"
        )
    return accelerator


def build_policy(cfg: GrpoConfig, generator: Generator) -> Policy:
    transformer = generator.trainable_module()
    params = attach_lora(transformer, cfg.lora)
    if cfg.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.eval()
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    ema = ParameterEMA(params, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None
    train_view = generator if cfg.train.cfg_in_training else generator.without_guidance()
    return Policy(train_view, transformer, params, optimizer, ema)


def train_grpo(
    cfg: GrpoConfig,
    generator: Generator | None = None,
    reward_fns: dict[str, RewardFn] | None = None,
    evaluate_fn: EvaluateFn | None = None,
) -> dict:
    """Train, evaluate before and after, save, publish; returns what metrics.json holds. A given
    `generator` must already be on the accelerator's device (the trainer moves nothing)."""
    run = setup(cfg, generator, reward_fns, evaluate_fn)
    output_dir = Path(cfg.output_dir)
    meta = (load_training_state(run.accelerator, output_dir) if cfg.resume else None) or {"step": 0}
    if meta["step"]:
        run.accelerator.print(f"resumed from {output_dir / 'state'} at step {meta['step']}")
    if run.eval_records and "eval_before" not in meta:
        # kept in the saved state, per prompt: a resumed run still reports it and its win rate
        meta["eval_before"] = evaluate(run, step=0)
    started = time.perf_counter()
    meta = train_loop(run, meta)
    return wrap_up(run, meta, time.perf_counter() - started, finish)


def wrap_up(run: Run, meta: dict, train_seconds: float, finish_fn: Callable[[Run, dict], None]) -> dict:
    """After the last step (GRPO and IPRO alike): the final evaluation, metrics.json's summary,
    `finish_fn` (save and publish), the before/after table; returns the summary."""
    after = evaluate(run, step=meta["step"]) if run.eval_records else None
    metrics = summarize(meta["step"], meta.get("eval_before"), after, meta.get("last_kl"), train_seconds)
    finish_fn(run, metrics)
    run.accelerator.print(summary_table(metrics))
    run.logger.finish()
    run.accelerator.end_training()
    return metrics


def load_prompts(data: DataConfig, accelerator: Accelerator,
                 evaluate_fn: EvaluateFn | None) -> tuple[list[PromptRecord], list[PromptRecord], EvaluateFn | None]:
    """Training and held-out prompt records; with the synthetic world enabled its manifests are
    written first and its identity measure becomes the evaluation hook (unless one is given)."""
    train_manifest, eval_manifest = data.train_manifest, data.eval_manifest
    if data.world.enabled:
        w = data.world
        with accelerator.main_process_first():  # one process writes, the others read
            train_manifest, eval_manifest = write_world_manifests(w.folder, w.num_train, w.num_heldout, w.seed, w.num_people)
        evaluate_fn = evaluate_fn or world_identity_metrics
    train_records = load_prompt_manifest(train_manifest, data.check_files)
    eval_records = load_prompt_manifest(eval_manifest, data.check_files) if eval_manifest else []
    return train_records, eval_records, evaluate_fn


def setup(cfg: GrpoConfig, generator: Generator | None, reward_fns, evaluate_fn: EvaluateFn | None) -> Run:
    """Accelerator, data, generator, rewards, LoRA policy; the LoRA and EMA registered for checkpoints."""
    cfg.validate_inputs(generator_given=generator is not None, rewards_given=reward_fns is not None)
    accelerator = make_accelerator(cfg)
    cfg.validate_processes(accelerator.num_processes)
    set_seed(cfg.train.seed)  # before the LoRA is attached: its initial values follow the seed
    train_records, eval_records, evaluate_fn = load_prompts(cfg.data, accelerator, evaluate_fn)
    if generator is None:
        generator = build_generator(cfg.generator, accelerator.device)
    rewards = WeightedRewards.from_config(cfg.rewards, accelerator.device, reward_fns)
    policy = build_policy(cfg, generator)
    policy.optimizer = accelerator.prepare(policy.optimizer)
    accelerator.register_for_checkpointing(LoraCheckpoint(policy.transformer))
    if policy.ema is not None:
        accelerator.register_for_checkpointing(policy.ema)
    s, t = cfg.sampling, cfg.train
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        generator=generator,
        eval_generator=at_resolution(generator, s.eval_height, s.eval_width, s.eval_num_frames),
        policy=policy,
        rewards=rewards,
        sampler=GroupSampler(len(train_records), t.group_size, t.prompts_per_step,
                             accelerator.num_processes, accelerator.process_index, t.seed),
        train_records=train_records,
        eval_records=eval_records,
        evaluate_fn=evaluate_fn,
        logger=RunLogger(cfg.output_dir, cfg.wandb.project, cfg.wandb.mode, to_dict(cfg), cfg.wandb.run_name,
                         enabled=accelerator.is_main_process),
    )


def train_loop(run: Run, meta: dict) -> dict:
    cfg, accelerator = run.cfg, run.accelerator
    progress = tqdm(total=cfg.train.num_steps, initial=meta["step"], desc="GRPO",
                    disable=not accelerator.is_local_main_process)
    while meta["step"] < cfg.train.num_steps:
        logged = train_iteration(run, meta["step"])
        meta["step"] += 1
        meta["last_kl"] = logged.get("train/kl_loss")
        run.logger.log(logged, step=meta["step"])
        progress.update(1)
        progress.set_postfix(reward=f"{logged['reward/mean']:.3f}", kl=f"{logged.get('train/kl_loss', 0.0):.2e}")
        t = cfg.train
        if t.eval_every and meta["step"] % t.eval_every == 0 and meta["step"] < t.num_steps:
            evaluate(run, meta["step"])
        if (t.save_every and meta["step"] % t.save_every == 0) or meta["step"] == t.num_steps:
            save_checkpoint(run, meta)
    progress.close()
    return meta


def train_iteration(run: Run, step: int) -> dict[str, float]:
    cfg, accelerator = run.cfg, run.accelerator
    schedule = noise_schedule(run, step)
    started = time.perf_counter()
    rollouts, reward_values = sample_and_score(run, step, schedule)
    sampled = time.perf_counter()
    advantage_stats = assign_advantages(run, rollouts)
    update_rng = torch.Generator().manual_seed(mix_seed(cfg.train.seed, step, accelerator.process_index, 7))
    update_stats = update_phase(accelerator, run.policy, rollouts, schedule, cfg.train, update_rng)
    logged = {f"train/{k}": v for k, v in update_stats.items()}
    logged.update({f"adv/{k}": v for k, v in advantage_stats.items()})
    logged.update(reward_statistics(accelerator, reward_values))
    logged.update({"time/sample": sampled - started, "time/update": time.perf_counter() - sampled})
    return logged


def noise_schedule(run: Run, step: int):
    """The training SDE, restricted to this iteration's window when one is configured (the window
    is drawn from a seed shared by all processes, so every process trains the same steps)."""
    t, s = run.cfg.train, run.cfg.sampling
    if not t.sde_window_size:
        return s.noise
    rng = torch.Generator().manual_seed(mix_seed(t.seed, step, 5))
    start = draw_window_start(s.train_steps, t.sde_window_size, t.sde_window_range, rng)
    return WindowedNoiseSchedule(s.noise, run.generator.sigmas(s.train_steps), start, t.sde_window_size)


def sample_and_score(run: Run, step: int, schedule) -> tuple[list[Rollout], dict[str, torch.Tensor]]:
    """This process's share of the iteration's groups: one Rollout per reference count (samples of
    one rollout can share micro-batches), with rewards; and the reward values for logging
    ({"reward": total, "reward/<name>": each reward})."""
    cfg, gen = run.cfg, run.generator
    rng = torch.Generator().manual_seed(mix_seed(cfg.train.seed, step, run.accelerator.process_index, 6))
    sigmas = gen.sigmas(cfg.sampling.train_steps)
    counts = [len(r.references) for r in run.train_records]
    by_count: dict[int, list[Rollout]] = {}
    values: dict[str, list[torch.Tensor]] = {}
    for batch in sampling_batches(run.sampler.slots(step), counts, cfg.train.sample_batch_size):
        records = [run.train_records[slot.prompt_index] for slot in batch]
        references = [r.load_references() for r in records]
        prompts = [r.prompt for r in records]
        with torch.no_grad():
            conds = gen.encode_conditions(prompts, references)
            with run.accelerator.autocast():  # as in the update's forwards, so the log-probs match
                trajectory = sample_with_log_probs(gen, conds, sigmas, schedule, rng)
            videos = gen.decode(trajectory.final_latents)
        total, per_reward = run.rewards(videos, references, prompts, records=records)
        group_ids = torch.tensor([slot.group_id for slot in batch])
        rollout = Rollout.from_trajectory(trajectory, conds, group_ids, references)
        rollout.rewards = total
        by_count.setdefault(len(references[0]), []).append(rollout)
        for key, value in {"reward": total, **{f"reward/{n}": v for n, v in per_reward.items()}}.items():
            values.setdefault(key, []).append(value)
    rollouts = [Rollout.concatenate(parts) for _, parts in sorted(by_count.items())]
    return rollouts, {name: torch.cat(parts) for name, parts in values.items()}


def assign_advantages(run: Run, rollouts: list[Rollout]) -> dict[str, float]:
    """Group-normalized advantages over all processes' rewards, written into the rollouts."""
    device = run.accelerator.device
    rewards = torch.cat([r.rewards for r in rollouts]).to(device)
    group_ids = torch.cat([r.group_ids for r in rollouts]).to(device)
    t = run.cfg.train
    advantages, stats = gather_for_advantages(run.accelerator, rewards, group_ids, t.adv_scaling, t.adv_clip)
    for rollout, part in zip(rollouts, advantages.split([r.batch_size for r in rollouts])):
        rollout.advantages = part.to(rollout.latents.device)
    return stats


def reward_statistics(accelerator, values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean and std over all processes' samples of the weighted total (key "reward") and of every
    reward (keys "reward/<name>")."""
    logged = {}
    for key, value in values.items():
        every = accelerator.gather(value.to(accelerator.device)).float()
        logged[f"{key}/mean"] = float(every.mean())
        logged[f"{key}/std"] = float(every.std(unbiased=False))
    return logged


@torch.no_grad()
def evaluate(run: Run, step: int) -> dict:
    """Deterministic samples of every held-out prompt with the EMA weights. Returns {"mean": the
    mean of every metric over all prompts (eval/reward: the weighted total, eval/reward/<name>,
    eval/<hook metric>), "per_prompt": {prompt index (str): {metric: value}}}; the main process
    also saves a sample grid of its first prompts under output_dir/samples."""
    accelerator = run.accelerator
    indices = range(accelerator.process_index, len(run.eval_records), accelerator.num_processes)
    counts = [len(r.references) for r in run.eval_records]
    results: list[tuple[int, dict[str, float]]] = []
    shown: list[tuple[int, torch.Tensor]] = []  # (prompt index, clip [T, H, W, 3]) for the grid
    with ema_weights(run.policy):
        for batch in sampling_batches([SampleSlot(i, i) for i in indices], counts, run.cfg.sampling.eval_batch_size):
            batch_indices = [slot.prompt_index for slot in batch]
            batch_results, videos = evaluate_batch(run, batch_indices, step)
            results += batch_results
            shown += list(zip(batch_indices, videos))[: run.cfg.sampling.grid_prompts - len(shown)]
    every = dict(gather_object(results))  # keyed by prompt index: one entry per held-out prompt
    names = sorted({name for values in every.values() for name in values})
    averaged = {f"eval/{name}": sum(v[name] for v in every.values()) / len(every) for name in names}
    run.logger.log(averaged, step=step)
    if accelerator.is_main_process and shown:
        save_samples(run, step, shown)
    return {"mean": averaged, "per_prompt": {str(i): values for i, values in sorted(every.items())}}


def save_samples(run: Run, step: int, shown: list[tuple[int, torch.Tensor]]) -> None:
    """output_dir/samples/step_NNNNN.{mp4,gif}: references | this evaluation's clips; after
    training also before_after.{mp4,gif}: references | before | after (the step-0 clips are kept)."""
    folder = Path(run.cfg.output_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    indices = [i for i, _ in shown]
    videos = torch.stack([v for _, v in shown]).float()
    references = [run.eval_records[i].load_references() for i in indices]
    mp4 = save_grid(sample_grid({f"step {step}": videos}, references), folder / f"step_{step:05d}")[0]
    run.logger.log_video("eval/samples", mp4, step)
    before_path = folder / "before.pt"
    if step == 0:
        torch.save({"indices": indices, "videos": videos.half()}, before_path)
    elif step == run.cfg.train.num_steps and before_path.is_file():
        before = torch.load(before_path, weights_only=True)
        if before["indices"] == indices:
            save_grid(sample_grid({"before": before["videos"].float(), f"after {step} steps": videos}, references),
                      folder / "before_after")


def evaluate_batch(run: Run, indices: list[int], step: int) -> tuple[list[tuple[int, dict[str, float]]], torch.Tensor]:
    """Per prompt of the batch, its metrics; and the clips [B, T, H, W, 3] on the CPU. Each
    prompt's initial noise is fixed by its index, so every evaluation (and any batching) compares
    like with like."""
    cfg, gen = run.cfg, run.eval_generator
    records = [run.eval_records[i] for i in indices]
    references = [r.load_references() for r in records]
    prompts = [r.prompt for r in records]
    conds = gen.encode_conditions(prompts, references)
    noise = torch.cat([
        gen.initial_noise(conds.select([j]), torch.Generator().manual_seed(mix_seed(cfg.train.seed, i, 3)))
        for j, i in enumerate(indices)
    ])
    rng = torch.Generator().manual_seed(mix_seed(cfg.train.seed, indices[0], 4))  # used only by a stochastic eval_noise
    with run.accelerator.autocast():
        trajectory = sample_with_log_probs(gen, conds, gen.sigmas(cfg.sampling.eval_steps), cfg.sampling.eval_noise, rng,
                                           initial_noise=noise)
    videos = gen.decode(trajectory.final_latents)
    total, per_reward = run.rewards(videos, references, prompts, records=records)
    metrics = {"reward": total, **{f"reward/{name}": value for name, value in per_reward.items()}}
    if run.evaluate_fn is not None:
        for name, value in run.evaluate_fn(EvalBatch(videos, records, total, per_reward, step)).items():
            value = torch.as_tensor(value).detach().float().cpu().reshape(-1)
            if value.shape != (len(indices),):
                raise ValueError(f"evaluate_fn: metric {name!r} has {value.numel()} values for {len(indices)} samples")
            metrics[name] = value
    return [(i, {name: float(value[j]) for name, value in metrics.items()}) for j, i in enumerate(indices)], videos.cpu()


def ema_weights(policy: Policy):
    """A context in which the LoRA holds its EMA (the raw weights when there is no EMA)."""
    return policy.ema.swapped_in() if policy.ema is not None else nullcontext()


def save_checkpoint(run: Run, meta: dict) -> None:
    """Resumable state (optimizer, LoRA, EMA, RNG, step) and the LoRA a pipeline can load (EMA weights)."""
    output_dir = Path(run.cfg.output_dir)
    save_training_state(run.accelerator, output_dir, meta)
    if run.accelerator.is_main_process:
        with ema_weights(run.policy):
            export_lora(run.policy.transformer, output_dir / "lora", run.generator.trainable_module_name())
    run.accelerator.wait_for_everyone()


def finish(run: Run, metrics: dict) -> None:
    """output_dir/final: the LoRA (EMA weights), the config, metrics; metrics.json; Hub upload."""
    cfg, accelerator = run.cfg, run.accelerator
    output_dir = Path(cfg.output_dir)
    if accelerator.is_main_process:
        final_dir = output_dir / "final"
        with ema_weights(run.policy):
            export_lora(run.policy.transformer, final_dir, run.generator.trainable_module_name())
        save_config(cfg, final_dir / "grpo_config.yaml")
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if cfg.hub.push:
            publish(cfg, final_dir, metrics)
    accelerator.wait_for_everyone()


def publish(cfg: GrpoConfig, final_dir: Path, metrics: dict) -> None:
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    for phase in ("eval_before", "eval_after"):
        flat.update({f"{phase}/{k.removeprefix('eval/')}": v for k, v in metrics.get(phase, {}).items()})
    summary = (
        f"A LoRA for `{cfg.generator.pretrained}` ({cfg.generator.kind}) trained with GRPO to keep every "
        f"person's identity in multi-person videos (identity-grpo). {loading_instructions(final_dir)}"
    )
    prepare_upload(final_dir, "Identity-GRPO LoRA", summary, flat, to_dict(cfg), ["lora", "video", "grpo", "wan"])
    url = push_folder(final_dir, cfg.hub.repo_id, private=cfg.hub.private, commit_message="identity-grpo LoRA")
    print(f"pushed {final_dir} to {url}")
