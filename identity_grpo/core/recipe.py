"""The recipe skeleton every trainer runs on (stage 1, GRPO, IPRO), written once:

    recipe.run():
        setup()                      the method's models, data, optimizer (accelerator via make_accelerator)
        resume                       the newest complete checkpoint (core/checkpointing.py), if any
        before_training()            e.g. the evaluation before any update (kept in the state)
        loop: train_step(step)       the method's one optimizer step -> logged values, or NonFiniteStep
              log, progress bar, evaluate(step) every train.eval_every, save every train.save_every and at the end
        finish:                      weights finite? -> final_metrics() -> export(final/) -> metrics.json -> Hub

Non-finite values (core/finite.py): a step that raises NonFiniteStep applied nothing; it is counted
per quantity (state.skipped_steps, logged as skip/<quantity>), and train.max_consecutive_skips in a
row stop the run. A stopped run, one whose trained weights are non-finite at the end, and one whose
final_metrics raises RunFailed (e.g. the trained model's outputs are non-finite) write metrics.json
with "status": "failed" and the reason, export and publish nothing, and raise RunFailed (one line
and exit 1 under run_entry). A finished run's metrics.json has "status": "ok" and the skip counts.

A method subclasses `Recipe` and supplies setup / checkpoint_parts / train_step / evaluate /
final_metrics / export / model_card; the loop, cadence, state, logging and publishing stay here.
The config must have `output_dir`, `resume`, `hub` (core.sections.HubConfig), `wandb`
(WandbConfig) and a `train` section with `eval_every`, `save_every`, `keep_checkpoints` and
`max_consecutive_skips`.

Resume is exact: a run killed at any point and started again with the same command ends with the
same weights and metrics as one that never stopped (on a CPU bitwise): the checkpoint holds every
part's state, every process's random generators and the RunState (data position included), and
the log is cut back to what it held when that checkpoint was written.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from tqdm.auto import tqdm

from identity_grpo.core.checkpointing import checkpoint_folders, load_checkpoint, save_checkpoint
from identity_grpo.core.config_io import ConfigError, RunFailed, to_dict
from identity_grpo.core.finite import NonFiniteStep, any_process, is_finite
from identity_grpo.core.hub import prepare_upload, push_folder
from identity_grpo.core.tracking import RunLogger


@dataclass
class RunState:
    """What a resumed run needs besides the accelerate state; saved as JSON beside it."""

    step: int = 0  # optimizer steps done (skipped ones included)
    log_lines: int = 0  # lines of log.jsonl when the state was saved (a resumed run cuts the log back to them)
    skipped_steps: dict[str, int] = field(default_factory=dict)  # steps skipped, by the non-finite quantity
    skipped_samples: dict[str, int] = field(default_factory=dict)  # samples a step dropped, by quantity
    consecutive_skips: int = 0  # skipped steps since the last one that trained


@dataclass
class ModelCard:
    title: str
    summary: str
    tags: list[str]


def make_accelerator(mixed_precision: str, gradient_accumulation_steps: int = 1,
                     engines: tuple[DistributedType, ...] = ()) -> Accelerator:
    """The run's accelerator. `engines`: the sharding engines (DeepSpeed, FSDP) this recipe supports;
    a launch with any other is refused before any model loads."""
    # Several CPU processes need gloo named explicitly; GPUs use NCCL, one process needs no group.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs = [InitProcessGroupKwargs(backend="gloo")] if several and not torch.cuda.is_available() else []
    # Without a GPU, cpu=True gives several CPU processes their process group, but would also make
    # accelerate drop a DeepSpeed launch without a word: DeepSpeed runs on the CPU (DS_ACCELERATOR=cpu).
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=gradient_accumulation_steps,
                              kwargs_handlers=kwargs, cpu=not torch.cuda.is_available() and not deepspeed)
    sharded = accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    if sharded and accelerator.distributed_type not in engines:
        supported = ", ".join(e.value for e in engines) or "none"
        raise ConfigError(f"this recipe cannot run under {accelerator.distributed_type.value} (supported engines: "
                          f"{supported}); launch with another accelerate config (launch/accelerate/)")
    return accelerator


class Recipe:
    """One training run. Subclasses set `name` and `state_class` and implement the hooks below."""

    name: ClassVar[str] = "training"
    state_class: ClassVar[type[RunState]] = RunState

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.accelerator: Accelerator | None = None  # set by setup()
        self.logger: RunLogger | None = None
        self.state: RunState = self.state_class()

    # --- what a method supplies -------------------------------------------------------------
    def setup(self) -> None:
        """Build everything; must set self.accelerator (make_accelerator) and call self.start_logger()."""
        raise NotImplementedError

    def checkpoint_parts(self) -> dict[str, object]:
        """What a checkpoint holds besides the RNG and the RunState: {name: an object with
        state_dict / load_state_dict (saved by the main process), or with save_to / load_from (a
        sharding engine's own files, every process)}."""
        raise NotImplementedError

    def total_steps(self) -> int:
        raise NotImplementedError

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step (step = steps done before it); returns the values to log ({}: nothing).
        Raises NonFiniteStep (the same on every process) when it skipped the step."""
        raise NotImplementedError

    def trainable_parameters(self) -> dict[str, torch.Tensor]:
        """Name -> every trained tensor final/ would be written from (checked to be finite)."""
        raise NotImplementedError

    def before_training(self) -> None:
        """After setup and resume, before the first step."""

    def evaluate(self, step: int) -> None:
        """The periodic evaluation (logged by the method)."""

    def after_step(self, logged: dict[str, float]) -> None:
        """Update the method's part of the state from a step's logged values."""

    def progress_fields(self, logged: dict[str, float]) -> dict[str, str]:
        return {}

    def on_save(self) -> None:
        """Extra files written with every saved state (e.g. the exported LoRA)."""

    def protected_steps(self) -> frozenset[int]:
        """Checkpoints never pruned (e.g. the reward-hacking guard's best step)."""
        return frozenset()

    def final_metrics(self, train_seconds: float) -> dict:
        """What metrics.json holds (called on every process; may be collective)."""
        raise NotImplementedError

    def export(self, final_dir: Path) -> None:
        """Write the trained model into final_dir (called on every process; the main one writes)."""
        raise NotImplementedError

    def summary(self, metrics: dict) -> str:
        """The table printed at the end ("" prints nothing)."""
        return ""

    def model_card(self) -> ModelCard:
        raise NotImplementedError

    # --- the skeleton -----------------------------------------------------------------------
    def run(self) -> dict:
        """Set up, resume, train, finish; returns what metrics.json holds, or raises RunFailed."""
        self.setup()
        self.resume()
        self.before_training()
        started = time.perf_counter()
        try:
            self.train_loop()
            return self.finish(time.perf_counter() - started)
        except RunFailed as failure:
            self.record_failure(str(failure))
            raise

    def start_logger(self) -> None:
        c = self.cfg
        self.logger = RunLogger(self.output_dir, c.wandb.project, c.wandb.mode, to_dict(c), c.wandb.run_name,
                                enabled=self.accelerator.is_main_process)

    def resume(self) -> None:
        """Continue from the newest complete checkpoint; resume=false refuses a folder that has one
        (a finished checkpoint is never overwritten by a fresh start)."""
        if not self.cfg.resume and checkpoint_folders(self.output_dir):
            raise ConfigError(f"output_dir {self.output_dir} holds checkpoints of an earlier run; resume=false would "
                              "overwrite them: choose another output_dir, or resume=true to continue it")
        saved = load_checkpoint(self.accelerator, self.output_dir, self.checkpoint_parts()) if self.cfg.resume else None
        if saved is not None:
            known = {f.name for f in fields(self.state_class)}
            self.state = self.state_class(**{k: v for k, v in saved.items() if k in known})
            self.accelerator.print(f"resumed from {self.output_dir / 'checkpoints'} at step {self.state.step}")
        self.logger.keep_first(self.state.log_lines)  # what was logged after that checkpoint is logged again

    def train_loop(self) -> None:
        t, total = self.cfg.train, self.total_steps()
        progress = tqdm(total=total, initial=self.state.step, desc=self.name,
                        disable=not self.accelerator.is_local_main_process)
        try:
            while self.state.step < total:
                counts = self.skip_counts()
                skip = None
                try:
                    logged = self.train_step(self.state.step)
                except NonFiniteStep as raised:
                    logged, skip = {}, raised
                self.state.step += 1
                step = self.state.step
                if skip is None:
                    self.state.consecutive_skips = 0
                    self.after_step(logged)
                else:
                    self.state.consecutive_skips += 1
                    self.state.skipped_steps[skip.quantity] = self.state.skipped_steps.get(skip.quantity, 0) + 1
                if logged:
                    progress.set_postfix(self.progress_fields(logged))
                if self.skip_counts() != counts:  # the counts are logged when they change
                    logged = {**logged, **self.skip_counts()}
                if logged:
                    self.logger.log(logged, step=step)
                progress.update(1)
                if self.state.consecutive_skips >= t.max_consecutive_skips:
                    raise RunFailed(f"run stopped at step {step}: {self.state.consecutive_skips} consecutive steps "
                                    f"skipped for non-finite values (train.max_consecutive_skips), the last for its "
                                    f"{skip.quantity}: {skip.detail}")
                # The last step is followed by the final evaluation: no periodic one there.
                if t.eval_every and step % t.eval_every == 0 and step < total:
                    self.evaluate(step)
                if (t.save_every and step % t.save_every == 0) or step == total:
                    self.save()
        finally:
            progress.close()

    def count_skipped_samples(self, quantity: str, count: int) -> None:
        """A step dropped `count` samples (all processes together) whose `quantity` was non-finite."""
        if count:
            self.state.skipped_samples[quantity] = self.state.skipped_samples.get(quantity, 0) + count

    def skip_counts(self) -> dict[str, int]:
        """The run's skips so far, as logged: skip/<quantity> (steps), skip/samples/<quantity>."""
        return {**{f"skip/{q}": n for q, n in sorted(self.state.skipped_steps.items())},
                **{f"skip/samples/{q}": n for q, n in sorted(self.state.skipped_samples.items())}}

    def save(self) -> None:
        """A complete checkpoint (parts, RNG, RunState) and the method's extra files."""
        self.state.log_lines = self.logger.lines
        save_checkpoint(self.accelerator, self.output_dir, self.state.step, self.checkpoint_parts(),
                        asdict(self.state), keep=self.cfg.train.keep_checkpoints, protect=self.protected_steps())
        self.on_save()
        self.accelerator.wait_for_everyone()

    def finish(self, train_seconds: float) -> dict:
        accelerator = self.accelerator
        final_dir = self.output_dir / "final"
        self.check_weights()
        failure = None
        try:
            metrics = self.final_metrics(train_seconds)
        except RunFailed as raised:  # e.g. the trained model's outputs are non-finite
            failure = raised
        if any_process(accelerator, failure is not None):  # final_metrics may run on the main process only
            raise RunFailed(f"run failed after step {self.state.step}, in the final evaluation: "
                            f"{failure or 'on another process'}; nothing exported")
        metrics = {"status": "ok", **metrics,
                   "skipped_steps": self.state.skipped_steps, "skipped_samples": self.state.skipped_samples}
        self.export(final_dir)
        if accelerator.is_main_process:
            (self.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
            if self.cfg.hub.push:
                self.publish(final_dir, metrics)
        accelerator.wait_for_everyone()
        table = self.summary(metrics)
        if table:
            accelerator.print(table)
        self.logger.finish()
        accelerator.end_training()
        return metrics

    def check_weights(self) -> None:
        """Every trained tensor is finite on every process, or the run failed: no evaluation or
        export is ever made from non-finite weights."""
        # Under DeepSpeed ZeRO-3 a parameter's own data is empty; this process's shard is ds_tensor.
        # A sharded (FSDP) tensor is checked by its local shard: every process checks its own.
        bad = [name for name, value in self.trainable_parameters().items()
               if not is_finite(value.to_local() if hasattr(value, "to_local") else getattr(value, "ds_tensor", value))]
        if any_process(self.accelerator, bool(bad)):
            where = f"{len(bad)} trained tensors, e.g. {bad[0]}" if bad else "trained tensors on another process"
            raise RunFailed(f"run failed after step {self.state.step}: non-finite values in {where}; nothing exported")

    def record_failure(self, reason: str) -> None:
        """metrics.json of a run that did not finish: its status, why, and the skip counts; no final/."""
        if self.accelerator.is_main_process:
            failed = {"status": "failed", "reason": reason, "steps": self.state.step,
                      "skipped_steps": self.state.skipped_steps, "skipped_samples": self.state.skipped_samples}
            (self.output_dir / "metrics.json").write_text(json.dumps(failed, indent=2))
        self.accelerator.wait_for_everyone()
        self.logger.finish()
        self.accelerator.end_training()

    def publish(self, final_dir: Path, metrics: dict) -> None:
        """final_dir with a model card (its numbers: metrics.json's top level and both evaluations) to the Hub."""
        card = self.model_card()
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for phase in ("eval_before", "eval_after"):
            numbers.update({f"{phase}/{k.removeprefix('eval/')}": v for k, v in (metrics.get(phase) or {}).items()})
        prepare_upload(final_dir, card.title, card.summary, numbers, to_dict(self.cfg), card.tags)
        url = push_folder(final_dir, self.cfg.hub.repo_id, private=self.cfg.hub.private, commit_message=card.title)
        print(f"pushed {final_dir} to {url}")
