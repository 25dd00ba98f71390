"""What GRPO and IPRO share around their training steps: prompts, the generator with a LoRA, the
held-out evaluation before, during and after training, checkpoints and the exported LoRA.

    setup(): accelerator, prompts (the synthetic world writes its own), generator (its prompt
             embeddings cached and text encoder offloaded with generator.offload_text_encoder), the method's
             reward (build_reward), the LoRA (+ gradient checkpointing), the method's optimizer,
             the evaluator (with the method's evaluation rewards and hook)
    before_training(): the evaluation before any update, kept in the state (a resumed run still reports it)
    finish: the evaluation after, metrics.json's summary (run_metrics.py), the LoRA in final/; a
            non-finite clip from the trained weights in that evaluation fails the run (RunFailed)
    guard (cfg.guard, finetune/guard.py): every evaluation is judged by a held-out metric; a
            suspected reward hack warns (one line) and logs guard/hacking; the best evaluation's
            checkpoint is saved and never pruned, and final/ is exported from it with
            guard.final: best_guard; metrics.json's "guard" holds the best step and the history

A method subclasses `FinetuneRecipe` and supplies build_reward, make_optimizer, evaluation_rewards,
train_step (and optionally the evaluation hook and the EMA).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from identity_grpo.core.checkpointing import checkpoint_folder, load_parts, verify
from identity_grpo.core.config_io import RunFailed, save_config
from identity_grpo.core.prompt_manifest import PromptRecord, load_prompt_manifest
from identity_grpo.core.recipe import ModelCard, Recipe, RunState, make_accelerator
from identity_grpo.core.timing import NO_TIMING
from identity_grpo.finetune.batches import GroupSampler
from identity_grpo.finetune.condition_cache import ConditionCache
from identity_grpo.finetune.config import DataConfig
from identity_grpo.finetune.evaluation import EvaluateFn, Evaluator
from identity_grpo.finetune.guard import (GuardPoint, best_point, history_from_record, history_record, judge,
                                          log_values, warning)
from identity_grpo.finetune.lora import (LoraCheckpoint, attach_lora, export_lora, lora_parameters, lora_state_dict,
                                         loading_instructions)
from identity_grpo.core.sharding import OptimizerState
from identity_grpo.finetune.sharding import shard_transformer
from identity_grpo.generators.config import DTYPES
from identity_grpo.finetune.policy import Policy
from identity_grpo.finetune.run_metrics import summarize, summary_table
from identity_grpo.generators.base import Generator, at_resolution
from identity_grpo.generators.factory import build_generator
from identity_grpo.generators.sequence_parallel import DataParallel, enable_sequence_parallel
from identity_grpo.rewards.registry import WeightedRewards
from identity_grpo.core.folder_lock import folder_lock
from identity_grpo.world.prompt_manifests import world_identity_metrics, write_world_manifests


@dataclass
class FinetuneState(RunState):
    eval_before: dict | None = None  # the evaluation before any update (run_metrics' format)
    last_kl: float | None = None  # the KL logged by the last step
    guard: list[dict] = field(default_factory=list)  # the guard's judged evaluations (finetune/guard.py's GuardPoint)
    guard_alarms: list[int] = field(default_factory=list)  # steps at which reward hacking was suspected


logger = logging.getLogger(__name__)


def load_prompts(data: DataConfig, accelerator: Accelerator,
                 evaluate_fn: EvaluateFn | None) -> tuple[list[PromptRecord], list[PromptRecord], EvaluateFn | None]:
    """Training and held-out prompt records; with the synthetic world enabled its manifests are
    written first and its identity measure becomes the evaluation hook (unless one is given)."""
    train_manifest, eval_manifest = data.train_manifest, data.eval_manifest
    if data.world.enabled:
        w = data.world
        # one process writes, the others read; other runs sharing the folder wait on its lock
        with accelerator.main_process_first(), folder_lock(w.folder):
            train_manifest, eval_manifest = write_world_manifests(w.folder, w.num_train, w.num_heldout, w.seed, w.num_people)
        evaluate_fn = evaluate_fn or world_identity_metrics
    train_records = load_prompt_manifest(train_manifest, data.check_files)
    # Held-out references are decoded by the evaluator, which leaves out and counts unreadable ones.
    eval_records = load_prompt_manifest(eval_manifest, data.check_files, decode=False) if eval_manifest else []
    return train_records, eval_records, evaluate_fn


class FinetuneRecipe(Recipe):
    state_class = FinetuneState
    method: ClassVar[str] = ""  # "GRPO" / "IPRO": the model card's words and the config file's name
    kl_key: ClassVar[str] = ""  # the logged value that becomes state.last_kl
    reward_metric: ClassVar[str] = "eval/reward"  # the training reward as evaluated (guard.reward's default)

    def __init__(self, cfg, generator: Generator | None = None, evaluate_fn: EvaluateFn | None = None):
        super().__init__(cfg)
        self.generator = generator  # a given generator is already on the accelerator's device
        self.evaluate_fn = evaluate_fn
        self.state: FinetuneState
        self.timer = NO_TIMING  # the benchmark's PhaseTimer (core/timing.py) times the steps' phases

    # --- what a method supplies -------------------------------------------------------------
    def validate_inputs(self) -> None:
        raise NotImplementedError

    def build_reward(self) -> None:
        """The training reward (built after the generator, before the LoRA: the seed order of every run)."""
        raise NotImplementedError

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        raise NotImplementedError

    def make_ema(self, params: list[torch.nn.Parameter]):
        return None

    def evaluation_rewards(self) -> WeightedRewards:
        raise NotImplementedError

    def evaluation_hook(self, hook: EvaluateFn | None) -> EvaluateFn | None:
        return hook

    def sampler_shape(self) -> tuple[int, int]:
        """(group size, groups per step) of the training samples."""
        raise NotImplementedError

    def policy_view(self) -> Generator:
        """The generator view training forwards run through."""
        return self.generator

    # --- shared setup and evaluation --------------------------------------------------------
    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.validate_inputs()
        self.accelerator = accelerator = make_accelerator(t.mixed_precision)
        cfg.validate_processes(accelerator.num_processes)
        accelerator.print(cfg.batch_arithmetic(accelerator.num_processes))
        set_seed(t.seed)  # before the LoRA is attached: its initial values follow the seed
        self.train_records, self.eval_records, hook = load_prompts(cfg.data, accelerator, self.evaluate_fn)
        if self.generator is None:
            self.generator = build_generator(cfg.generator, accelerator.device)
        # Groups of train.sequence_parallel processes split each sample's tokens and share its prompt
        # and noise (generators/sequence_parallel.py); the groups are data parallel.
        split = getattr(t, "sequence_parallel", 1)
        self.data_parallel = DataParallel(accelerator.num_processes, accelerator.process_index)
        if split > 1:
            experts = [self.generator.transformer, getattr(self.generator, "transformer_2", None)]
            self.data_parallel = enable_sequence_parallel([e for e in experts if e is not None], split)
        if cfg.generator.offload_text_encoder:  # every prompt the run uses, encoded once; UMT5 leaves the GPU
            self.generator.offload_text_encoder([r.prompt for r in (*self.train_records, *self.eval_records)])
        self.build_reward()
        transformer = self.generator.trainable_module()
        params = attach_lora(transformer, cfg.lora)
        if t.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        if cfg.speed.compile:  # in place: every view of the generator runs the compiled forward
            transformer.compile()
        self.conditions = ConditionCache(self.generator, cfg.speed.condition_cache)
        sharded = t.sharding == "fsdp"
        if sharded:
            shard_transformer(transformer, DTYPES[cfg.generator.dtype])
            params = lora_parameters(transformer)  # sharding replaced every parameter with its shard
        transformer.eval()
        optimizer = accelerator.prepare(self.make_optimizer(params))
        self.policy = Policy(self.policy_view(), transformer, params, optimizer, self.make_ema(params), sharded)
        group_size, groups = self.sampler_shape()
        self.sampler = GroupSampler(len(self.train_records), group_size, groups, self.data_parallel.size,
                                    self.data_parallel.rank, t.seed)
        self.start_logger()
        s = cfg.sampling
        self.evaluator = Evaluator(
            accelerator, at_resolution(self.generator, s.eval_height, s.eval_width, s.eval_num_frames),
            self.eval_records, self.evaluation_rewards(), self.evaluation_hook(hook), s, t.seed,
            self.policy.ema_weights, self.logger, self.output_dir, t.num_steps, sharded, self.data_parallel)

    def checkpoint_parts(self) -> dict[str, object]:
        parts = {"lora": LoraCheckpoint(self.policy.transformer),
                 "optimizer": OptimizerState(self.policy.transformer, self.policy.optimizer, self.policy.sharded)}
        if self.policy.ema is not None:
            parts["ema"] = self.policy.ema
        return parts

    def total_steps(self) -> int:
        return self.cfg.train.num_steps

    def before_training(self) -> None:
        if self.eval_records and self.state.eval_before is None:
            self.state.eval_before = self.evaluator(step=0)
            self.watch(self.state.eval_before, 0, saved=False)

    def after_step(self, logged: dict[str, float]) -> None:
        self.state.last_kl = logged.get(self.kl_key)

    def evaluate(self, step: int) -> None:
        if self.eval_records:
            save_every = self.cfg.train.save_every
            self.watch(self.evaluator(step), step, saved=bool(save_every) and step % save_every == 0)

    # --- the reward-hacking guard -----------------------------------------------------------
    def watch(self, result: dict, step: int, saved: bool) -> None:
        """Judge an evaluation by the guard: log it, warn on a suspected hack, and checkpoint a new
        best (saved: the loop saves this step anyway, after this evaluation)."""
        g = self.cfg.guard
        if not g.metric:
            return
        reward = g.reward or self.reward_metric
        missing = [name for name in (g.metric, reward) if name not in result["mean"]]
        if missing:  # every prompt's value was non-finite, or the metric is not measured here
            self.accelerator.print(f"warning: guard: no {' or '.join(missing)} in the evaluation at step {step} "
                                   "(non-finite or not measured); this evaluation is not judged")
            return
        history = history_from_record(self.state.guard)
        verdict = judge(history, GuardPoint(step, float(result["mean"][reward]), float(result["mean"][g.metric])),
                        g.max_drop)
        self.state.guard = history_record([*history, verdict.point])
        if verdict.hacking:
            self.state.guard_alarms.append(step)
            line = warning(verdict, g.metric, reward)
            logger.warning(line)
            self.accelerator.print(line)
        self.logger.log(log_values(verdict), step=step)
        if verdict.new_best and not saved:
            self.save()

    def guard_best(self) -> GuardPoint | None:
        history = history_from_record(self.state.guard)
        return best_point(history) if history else None

    def protected_steps(self) -> frozenset[int]:
        best = self.guard_best()
        return frozenset() if best is None else frozenset({best.step})

    def final_step(self) -> int:
        """The step whose weights final/ holds."""
        best = self.guard_best()
        return best.step if self.cfg.guard.final == "best_guard" and best is not None else self.state.step

    def guard_summary(self) -> dict:
        g, best = self.cfg.guard, self.guard_best()
        return {"metric": g.metric, "reward": g.reward or self.reward_metric, "max_drop": g.max_drop,
                "best_step": best.step if best else None, "best": best.guard if best else None,
                "final": g.final, "final_step": self.final_step(), "alarms": list(self.state.guard_alarms),
                "history": list(self.state.guard)}

    def on_save(self) -> None:
        """The LoRA a pipeline can load (evaluation weights), beside every saved state."""
        self.write_lora(self.output_dir / "lora")

    def write_lora(self, folder: Path) -> None:
        """The LoRA with the evaluation weights in diffusers naming; every process gathers (a sharded
        LoRA is a collective), the main one writes."""
        with self.policy.ema_weights():
            state = lora_state_dict(self.policy.transformer)
        if self.accelerator.is_main_process:
            export_lora(self.policy.transformer, folder, self.generator.trainable_module_name(), state)

    # --- finish -----------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, torch.Tensor]:
        """The LoRA and, with an EMA, its averages (what final/ is exported from)."""
        names = [n for n, _ in self.policy.transformer.named_parameters() if "lora_" in n]  # lora_parameters' order
        tensors = dict(zip(names, self.policy.params))
        if self.policy.ema is not None:
            tensors.update({f"ema.{n}": shadow for n, shadow in zip(names, self.policy.ema.shadow)})
        return tensors

    def final_metrics(self, train_seconds: float) -> dict:
        """The evaluation after training and the summary. Finite weights can still generate NaN clips
        (a blown-up LoRA holds values of 1e9): such a run failed, whatever its rewards say."""
        after = self.evaluator(step=self.state.step) if self.eval_records else None
        if after and after["non_finite"]["clip"]:
            raise RunFailed(f"the trained weights generate non-finite clips for {after['non_finite']['clip']} of "
                            f"{len(self.evaluator.usable)} held-out prompts")
        metrics = summarize(self.state.step, self.state.eval_before, after, self.state.last_kl, train_seconds)
        if self.cfg.guard.metric:
            if after:
                self.watch(after, self.state.step, saved=True)  # the loop saved the last step
            guard = self.guard_summary()
            metrics = {**metrics, "guard_best_step": guard["best_step"], "final_step": guard["final_step"],
                       "guard": guard}
        return metrics

    def export(self, final_dir: Path) -> None:
        """final/: the LoRA (evaluation weights, diffusers naming) and the config; with guard.final:
        best_guard, the LoRA (and EMA) of the guard's best checkpoint."""
        step = self.final_step()
        if step != self.state.step:
            folder = checkpoint_folder(self.output_dir, step)
            problem = verify(folder)
            if problem:
                raise RunFailed(f"guard.final: best_guard, but the checkpoint of step {step} ({folder}) is damaged: "
                                f"{problem}; nothing exported")
            parts = self.checkpoint_parts()
            load_parts(folder, {name: parts[name] for name in ("lora", "ema") if name in parts})
        self.write_lora(final_dir)
        if self.accelerator.is_main_process:
            save_config(self.cfg, final_dir / f"{self.method.lower()}_config.yaml")

    def summary(self, metrics: dict) -> str:
        return summary_table(metrics)

    def model_card(self) -> ModelCard:
        g = self.cfg.generator
        return ModelCard(
            title=f"Identity-preserving LoRA ({self.method})",
            summary=(f"A LoRA for `{g.pretrained}` ({g.kind}) trained with {self.method} to keep every person's "
                     f"identity in multi-person videos (identity-grpo). {loading_instructions(self.output_dir / 'final')}"),
            tags=["lora", "video", self.method.lower(), "wan"],
        )
