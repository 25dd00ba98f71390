"""Stage-1 training loop (plain accelerate): pairs in, a Bradley-Terry(-ties) reward model out.

    prepare data -> build model -> loop(micro-batch: score both clips, BTT loss, step) ->
    periodic eval / checkpoint -> final eval vs. the non-learned baseline -> metrics.json -> Hub
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from identity_grpo.core.checkpointing import load_training_state, save_training_state
from reward_model.config import RewardConfig
from identity_grpo.core.config_io import to_dict
from reward_model.pair_metrics import calibrate_tie_threshold, pair_report
from reward_model.losses import bradley_terry_loss, bt_ties_loss
from reward_model.model import RewardModel, build_reward_model
from identity_grpo.world.identities import vocabulary as synthetic_vocabulary
from reward_model.evaluation import final_evaluation, score_rows
from identity_grpo.core.hub import prepare_upload, push_folder
from reward_model.pair_dataset import PairCollator, PairVideoDataset, load_splits
from identity_grpo.core.tracking import RunLogger


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches done (for resuming the data order)
    skipped: int = 0  # pairs skipped because a file could not be read


def build_model_for_training(cfg: RewardConfig, accelerator: Accelerator) -> RewardModel:
    """A fresh model, or (synthetic world) the cached verification-pretrained one."""
    if not cfg.pretrain.enabled:
        return build_reward_model(cfg.model, synthetic_vocabulary() if cfg.model.backbone == "tiny" else ())
    from reward_model.pretrain import pretrained_model_dir

    s = cfg.data.synthetic
    with accelerator.main_process_first():  # the main process pretrains; the others then find the cache
        folder = pretrained_model_dir(cfg.model, cfg.pretrain, s.num_frames, s.height, s.width)
    return RewardModel.from_pretrained(folder)


def make_accelerator(cfg: RewardConfig) -> Accelerator:
    from accelerate.utils import InitProcessGroupKwargs

    # Several CPU processes need gloo named explicitly; GPUs use NCCL, one process needs no group.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs = [InitProcessGroupKwargs(backend="gloo")] if several and not torch.cuda.is_available() else []
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum_steps,
        kwargs_handlers=kwargs,
        cpu=not torch.cuda.is_available(),
    )


def pair_loss(cfg: RewardConfig, rewards: torch.Tensor, labels: torch.Tensor):
    reward_a, reward_b = rewards.float().chunk(2)
    if cfg.train.loss == "btt":
        return bt_ties_loss(reward_a, reward_b, labels, k=cfg.train.ties_k)
    return bradley_terry_loss(reward_a, reward_b, labels)


def total_steps(cfg: RewardConfig, num_pairs: int, world_size: int) -> int:
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    per_step = cfg.train.batch_size * cfg.train.grad_accum_steps * world_size
    return max(1, math.ceil(cfg.train.epochs * num_pairs / per_step))


def lr_lambda(warmup: int, total: int):
    """Linear warmup, then cosine decay to 10% of the peak rate."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# Rate statistics are means over the non-tied (or tied) pairs of a micro-batch: weight them so.
WEIGHT_OF = {"accuracy": "num_non_tied", "margin": "num_non_tied", "tie_abs_margin": "num_tied", "tie_within_margin": "num_tied"}


def accumulate(running: dict[str, float], loss: float, stats: dict[str, float]) -> None:
    running["loss"] = running.get("loss", 0.0) + loss
    running["micro_batches"] = running.get("micro_batches", 0.0) + 1
    for key, value in stats.items():
        weight = stats.get(WEIGHT_OF[key], 0.0) if key in WEIGHT_OF else 1.0
        running[key] = running.get(key, 0.0) + float(value) * weight


def averages(running: dict[str, float]) -> dict[str, float]:
    out = {"loss": running["loss"] / running["micro_batches"]}
    for key, weight_key in WEIGHT_OF.items():
        if running.get(weight_key):
            out[key] = running.get(key, 0.0) / running[weight_key]
    return out


def endless(loader: DataLoader, skip: int):
    """Yield batches forever (epoch after epoch), skipping the first `skip` micro-batches once."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for batch in loader:
            if skip > 0:
                skip -= 1
                continue
            yield batch
        epoch += 1


def train_reward_model(cfg: RewardConfig) -> dict:
    cfg.validate_inputs()  # the manifests and backbone exist, before the accelerator or any model starts
    accelerator = make_accelerator(cfg)
    set_seed(cfg.train.seed)
    output_dir = Path(cfg.output_dir)
    splits = load_splits(cfg.data, accelerator)
    model: RewardModel = build_model_for_training(cfg, accelerator)
    collator = PairCollator(model.processor)
    dataset = PairVideoDataset(splits["train"], num_frames=model.config.num_frames, max_pixels=model.config.max_pixels)
    loader = DataLoader(
        dataset, batch_size=cfg.train.batch_size, shuffle=True, collate_fn=collator,
        num_workers=cfg.data.num_workers, drop_last=len(dataset) >= cfg.train.batch_size,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps = total_steps(cfg, len(dataset), accelerator.num_processes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.warmup_steps, steps))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    state = LoopState()
    if cfg.resume:
        meta = load_training_state(accelerator, output_dir)
        if meta:
            state = LoopState(**meta)
            accelerator.print(f"resumed from {output_dir / 'state'} at step {state.step}")
    logger = RunLogger(output_dir, cfg.wandb.project, cfg.wandb.mode, to_dict(cfg), cfg.wandb.run_name,
                       enabled=accelerator.is_main_process)
    run_loop(cfg, accelerator, model, optimizer, scheduler, loader, splits, state, steps, logger)
    save_training_state(accelerator, output_dir, vars(state))  # a longer rerun continues from here

    unwrapped = accelerator.unwrap_model(model)
    final_dir = output_dir / "final"
    state_dict = accelerator.get_state_dict(model)  # collective: gathers ZeRO-3 shards on every rank
    if accelerator.is_main_process:
        unwrapped.save_pretrained(final_dir, state_dict=state_dict)
    accelerator.wait_for_everyone()
    metrics = {}
    if accelerator.is_main_process:
        metrics = final_evaluation(cfg, unwrapped, splits, final_dir, accelerator.device)
        metrics["skipped_pairs"] = state.skipped
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        logger.log({f"test/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=state.step)
        if cfg.hub.push:
            publish(cfg, final_dir, metrics)
    logger.finish()
    accelerator.end_training()
    return metrics


def run_loop(cfg, accelerator, model, optimizer, scheduler, loader, splits, state: LoopState, steps: int, logger):
    model.train()
    batches = endless(loader, skip=state.micro_step)
    progress = tqdm(total=steps, initial=state.step, desc="reward training", disable=not accelerator.is_local_main_process)
    running: dict[str, float] = {}
    while state.step < steps:
        batch = next(batches)
        state.micro_step += 1
        state.skipped += batch.num_skipped
        with accelerator.accumulate(model):
            rewards = model(batch.inputs)
            loss, stats = pair_loss(cfg, rewards, batch.labels)
            accelerator.backward(loss)
            grad_norm = None
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        accumulate(running, loss.item(), stats)
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        progress.update(1)
        if state.step % cfg.train.log_every == 0 or state.step == steps:
            logged = {f"train/{k}": v for k, v in averages(running).items()}
            logged.update({"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm or 0.0)})
            logger.log(logged, step=state.step)
            progress.set_postfix(loss=f"{logged['train/loss']:.3f}", acc=f"{logged.get('train/accuracy', float('nan')):.2f}")
            running = {}
        if cfg.train.eval_every and state.step % cfg.train.eval_every == 0 and splits.get("val"):
            logger.log(validation_metrics(cfg, accelerator, model, splits["val"]), step=state.step)
            model.train()
        if cfg.train.save_every and state.step % cfg.train.save_every == 0:
            save_training_state(accelerator, cfg.output_dir, vars(state))
    progress.close()


def validation_metrics(cfg, accelerator, model, rows: list[dict]) -> dict:
    from reward_model.scorer import RewardScorer

    unwrapped = accelerator.unwrap_model(model)
    scores = score_rows(RewardScorer(unwrapped, device=accelerator.device).score, rows,
                        unwrapped.config.num_frames, desc="validation")
    threshold = calibrate_tie_threshold(scores.margin, [r["label"] for r in rows])
    report = pair_report(scores, threshold)
    return {"val/accuracy": report.accuracy, "val/tie_accuracy": report.tie_accuracy}


def publish(cfg: RewardConfig, final_dir: Path, metrics: dict) -> None:
    card_metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    summary = (
        "Identity-consistency reward model for multi-person videos (Bradley-Terry with ties on "
        f"pairwise preferences), trained with identity-grpo. Backbone: `{cfg.model.backbone}`."
    )
    prepare_upload(final_dir, "Identity reward model", summary, card_metrics, to_dict(cfg), ["reward-model", "video"])
    url = push_folder(final_dir, cfg.hub.repo_id, private=cfg.hub.private, commit_message="identity reward model")
    print(f"pushed {final_dir} to {url}")
