"""Stage 1's training step (the run around it is core/recipe.py): pairs in, a Bradley-Terry(-ties)
reward model out.

    setup: pairs (built from the synthetic world when no manifests are given), model (the tiny
    backbone pretrained on the world, cached), AdamW, warmup + cosine schedule; the pairs come in
    an order that is a pure function of the seed and the position (pair_order.py)
    step: grad_accum micro-batches (score both clips, BTT loss, backward) -> one optimizer step
          (skipped, as is its schedule step, when a loss or the gradient is non-finite)
    finish: the model in final/, the held-out evaluation against the non-learned baseline -> metrics.json

Two ways to spread a run over GPUs: DeepSpeed ZeRO-2 (launch/accelerate/multi_gpu_zero2.yaml), or
FSDP2 with `train.sharding: fsdp` on a plain multi-process launch (core/sharding.py): every decoder
layer and vision block sharded on its own, weights, gradients and AdamW state 1/N per process,
gradients averaged over the processes as DDP would. The logged training values are means over
every process's pairs.

    metrics = train_reward_model(cfg)
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader

from identity_grpo.core.checkpointing import check_weights_only
from identity_grpo.core.finite import NonFiniteStep, describe, first_non_finite
from identity_grpo.core.config_io import ConfigError
from identity_grpo.core.recipe import ModelCard, Recipe, RunState, make_accelerator
from identity_grpo.core.sharding import OptimizerState, distribute, full, shard_modules
from identity_grpo.world.identities import vocabulary as synthetic_vocabulary
from reward_model.config import RewardConfig
from reward_model.evaluation import final_evaluation, score_rows, validation_metrics
from reward_model.losses import bradley_terry_loss, bt_ties_loss
from reward_model.model import RewardModel, build_reward_model
from reward_model.pair_dataset import PairCollator, PairVideoDataset, load_splits
from reward_model.pair_order import PairOrder


@dataclass
class RewardState(RunState):
    micro_step: int = 0  # micro-batches done by each process (the data order resumes from here)
    skipped: int = 0  # pairs skipped because a file could not be read


def train_reward_model(cfg: RewardConfig) -> dict:
    """Train, evaluate on held-out pairs, save, publish; returns what metrics.json holds."""
    return RewardRecipe(cfg).run()


def build_model_for_training(cfg: RewardConfig, accelerator: Accelerator) -> RewardModel:
    """A fresh model, or (synthetic world) the cached verification-pretrained one."""
    if not cfg.pretrain.enabled:
        return build_reward_model(cfg.model, synthetic_vocabulary() if cfg.model.backbone == "tiny" else ())
    from reward_model.pretrain import pretrained_model_dir

    s = cfg.data.synthetic
    with accelerator.main_process_first():  # the main process pretrains; the others then find the cache
        folder = pretrained_model_dir(cfg.model, cfg.pretrain, s.num_frames, s.height, s.width)
    return RewardModel.from_pretrained(folder)


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


# Every sum `accumulate` keeps: a fixed list, so that all processes add up the same vector.
SUMS = ("loss", "micro_batches", "num_non_tied", "num_tied", *WEIGHT_OF)


def global_sums(accelerator, running: dict[str, float]) -> dict[str, float]:
    """`running` summed over the processes (as it is with one): the logged means cover every pair."""
    if accelerator.num_processes == 1:
        return running
    values = torch.tensor([running.get(k, 0.0) for k in SUMS], dtype=torch.float64, device=accelerator.device)
    return dict(zip(SUMS, accelerator.reduce(values, "sum").tolist()))


def averages(running: dict[str, float]) -> dict[str, float]:
    out = {"loss": running["loss"] / running["micro_batches"]}
    for key, weight_key in WEIGHT_OF.items():
        if running.get(weight_key):
            out[key] = running.get(key, 0.0) / running[weight_key]
    return out


def shard_reward_model(model: RewardModel) -> None:
    """FSDP2 in place: each decoder layer and vision block gathered on its own, the rest (embeddings,
    merger, reward embedding and head) as one group; gradients averaged over the processes."""
    qwen = model.backbone.model
    shard_modules(model, [*qwen.language_model.layers, *qwen.visual.blocks], average=True)


class TrainableParameters:
    """The model's trained parameters as a checkpoint part (the frozen ones are rebuilt from the base);
    whole tensors (gathered on every process when the model is sharded)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: full(p.detach()) for name, p in self.model.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.model.named_parameters())
        if set(state) != set(self.state_dict()):
            raise ValueError("recipe.TrainableParameters: the checkpoint's parameters differ from this model's "
                             "trained ones (was the config changed?)")
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(distribute(value, own[name]))


class DeepSpeedEngineState:
    """Under DeepSpeed the engine owns the model and its partitioned optimizer: its own checkpoint
    files, each checked to load as plain tensors and containers before DeepSpeed reads them."""

    def __init__(self, engine):
        self.engine = engine

    def save_to(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag="engine", save_latest=False)

    def load_from(self, folder: Path) -> None:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        # Besides tensors ZeRO's files hold these plain records (a loss scaler's fields, an enum, a
        # fragment's offsets); anything else in them is refused before DeepSpeed unpickles them.
        records = (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)
        for file in sorted((folder / "engine").glob("*.pt")):
            check_weights_only(file, allowed=records)
        self.engine.load_checkpoint(str(folder), tag="engine", load_optimizer_states=True, load_lr_scheduler_states=False)


class RewardRecipe(Recipe):
    name = "reward training"
    state_class = RewardState

    def __init__(self, cfg: RewardConfig):
        super().__init__(cfg)
        self.state: RewardState
        self.running: dict[str, float] = {}  # training statistics since the last log line

    def setup(self) -> None:
        cfg = self.cfg
        cfg.validate_inputs()  # the manifests and backbone exist, before the accelerator or any model starts
        self.accelerator = accelerator = make_accelerator(
            cfg.train.mixed_precision, cfg.train.grad_accum_steps, engines=(DistributedType.DEEPSPEED,))
        self.sharded = cfg.train.sharding == "fsdp"
        if self.sharded and accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ConfigError("train.sharding: fsdp and a DeepSpeed launch both shard the model; choose one "
                              "(train.sharding=none under DeepSpeed, or launch/accelerate/multi_gpu.yaml for FSDP)")
        accelerator.print(cfg.batch_arithmetic(accelerator.num_processes))
        set_seed(cfg.train.seed)
        self.splits = load_splits(cfg.data, accelerator)
        model = build_model_for_training(cfg, accelerator)
        self.dataset = PairVideoDataset(self.splits["train"], num_frames=model.config.num_frames,
                                        max_pixels=model.config.max_pixels)
        self.collator = PairCollator(model.processor)
        if self.sharded:  # the optimizer then sees each parameter's shard
            shard_reward_model(model.to(accelerator.device))
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.steps = total_steps(cfg, len(self.dataset), accelerator.num_processes)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.warmup_steps, self.steps))
        if accelerator.distributed_type == DistributedType.DEEPSPEED:  # its config's "auto" batch size
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
        if self.sharded:  # accelerate would wrap the sharded model in DDP: it stays as it is
            self.optimizer, self.scheduler = accelerator.prepare(optimizer, scheduler)
            self.model = model
        else:
            self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.start_logger()

    def total_steps(self) -> int:
        return self.steps

    def checkpoint_parts(self) -> dict[str, object]:
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            return {"engine": DeepSpeedEngineState(self.model), "scheduler": self.scheduler}
        model = self.accelerator.unwrap_model(self.model)
        return {"model": TrainableParameters(model), "optimizer": OptimizerState(model, self.optimizer, self.sharded),
                "scheduler": self.scheduler}

    def before_training(self) -> None:
        """The pairs from where the run stopped (PairOrder: a pure function of seed and position)."""
        a, t = self.accelerator, self.cfg.train
        order = PairOrder(len(self.dataset), t.batch_size, a.num_processes, a.process_index, t.seed,
                          start=self.state.micro_step)
        # Its own generator: an iterator draws a worker seed, which must not come from the global
        # stream the model's dropout uses (a resumed run would then differ from an uninterrupted one).
        loader = DataLoader(self.dataset, batch_sampler=order, collate_fn=self.collator,
                            num_workers=self.cfg.data.num_workers, generator=torch.Generator().manual_seed(t.seed))
        self.batches = iter(loader)
        self.model.train()

    def train_step(self, step: int) -> dict[str, float]:
        """grad_accum micro-batches, one optimizer step; logs every train.log_every steps and at the last.
        A non-finite loss or gradient (on any process) skips the whole step: no optimizer or
        schedule step, the gradients dropped."""
        accelerator, t = self.accelerator, self.cfg.train
        losses, micro_stats = [], []
        while True:
            batch = next(self.batches)
            self.state.micro_step += 1
            self.state.skipped += batch.num_skipped
            with accelerator.accumulate(self.model):
                # A prepared model runs under the launch's autocast; the sharded one is not prepared.
                with accelerator.autocast() if self.sharded else contextlib.nullcontext():
                    rewards = self.model(batch.inputs)
                loss, stats = pair_loss(self.cfg, rewards, batch.labels)
                # Backward even a non-finite loss: its gradients are dropped below, and every process
                # runs the same collectives (DeepSpeed steps inside backward, skipping non-finite gradients itself).
                accelerator.backward(loss)
                losses.append(loss.detach())
                micro_stats.append(stats)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
                    grad_norm = None if grad_norm is None else full(grad_norm)  # sharded: the norm of all shards
                    checked = {"loss": torch.stack(losses), "gradient": grad_norm}
                    bad = first_non_finite(accelerator, checked)
                    if bad is None:
                        self.optimizer.step()
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    break
        if bad is not None:
            raise NonFiniteStep(bad, describe(checked[bad]))
        for loss, stats in zip(losses, micro_stats):
            accumulate(self.running, loss.item(), stats)
        done = step + 1
        if done % t.log_every and done != self.steps:
            return {}
        logged = {f"train/{k}": v for k, v in averages(global_sums(accelerator, self.running)).items()}
        logged.update({"train/lr": self.scheduler.get_last_lr()[0], "train/grad_norm": float(grad_norm or 0.0)})
        self.running = {}
        return logged

    def trainable_parameters(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def progress_fields(self, logged: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{logged['train/loss']:.3f}", "acc": f"{logged.get('train/accuracy', float('nan')):.2f}"}

    def evaluate(self, step: int) -> None:
        """Validation (evaluation.validation_metrics: accuracies, or the count of non-finite scores;
        the pairs left out for an unreadable file), logged."""
        rows = self.splits.get("val")
        if not rows:
            return
        from reward_model.scorer import RewardScorer

        unwrapped = self.accelerator.unwrap_model(self.model)
        scores = score_rows(RewardScorer(unwrapped, device=self.accelerator.device).score, rows,
                            unwrapped.config.num_frames, desc="validation")
        self.model.train()
        self.logger.log(validation_metrics(scores), step=step)

    def export(self, final_dir: Path) -> None:
        if self.sharded:  # collective: every process gathers the shards
            state_dict = {name: full(value) for name, value in self.model.state_dict().items()}
        else:
            state_dict = self.accelerator.get_state_dict(self.model)  # collective: gathers ZeRO-3 shards on every rank
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.model).save_pretrained(final_dir, state_dict=state_dict)
        self.accelerator.wait_for_everyone()

    def final_metrics(self, train_seconds: float) -> dict:
        """The held-out pairs, the learned model against the baseline (main process; the table is
        printed). A sharded model's forwards are collectives: every process scores the same pairs
        in step, and only the main one prints and keeps the result."""
        main = self.accelerator.is_main_process
        if not main and not self.sharded:
            return {}
        final_dir = self.output_dir / "final"
        with contextlib.redirect_stdout(sys.stdout if main else io.StringIO()):
            metrics = final_evaluation(self.cfg, self.accelerator.unwrap_model(self.model), self.splits, final_dir,
                                       self.accelerator.device)
        if not main:
            return {}
        metrics["skipped_pairs"] = self.state.skipped
        self.logger.log({f"test/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=self.state.step)
        return metrics

    def model_card(self) -> ModelCard:
        return ModelCard(
            title="Identity reward model",
            summary=("Identity-consistency reward model for multi-person videos (Bradley-Terry with ties on "
                     f"pairwise preferences), trained with identity-grpo. Backbone: `{self.cfg.model.backbone}`."),
            tags=["reward-model", "video"],
        )
