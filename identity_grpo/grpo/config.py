"""The GRPO experiment config: one YAML file in configs/grpo/, validated before any model loads.

    cfg = load_config(GrpoConfig, "configs/grpo/vace_1.3b.yaml", ["train.lr=5e-5"])  # runs validate()
    cfg.validate_inputs()                                # the files it names exist (before any model loads)
    cfg.validate_processes(accelerator.num_processes)   # once the launch is known

`validate` checks what the file alone decides (numbers, divisibility, combinations, reward names
and options), so every YAML in configs/ loads anywhere; `validate_inputs` checks the machine:
required inputs given and every path present. Every error names the field (`train.group_size`,
`rewards[1].weight`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from identity_grpo.core.config_io import ConfigError, check_options, require_at_least, require_positive
from identity_grpo.core.sections import RunSettings
from identity_grpo.finetune.config import (DataConfig, EvalSampling, GuardConfig, LoraSettings, SpeedSettings,
                                          check_manifest_inputs, largest_divisor_at_most, validate_guard, validate_lora,
                                          validate_sampling, validate_speed,
                                          validate_world)
from identity_grpo.finetune.sde import NoiseSchedule
from identity_grpo.generators.config import GeneratorConfig
from identity_grpo.rewards.registry import check_reward_inputs, validate_reward_specs
from identity_grpo.rewards.spec import RewardSpec


@dataclass
class SamplingConfig(EvalSampling):
    train_steps: int = 25  # SDE steps of a training rollout
    eval_steps: int = 50  # steps of an evaluation sample
    noise: NoiseSchedule = field(default_factory=NoiseSchedule)  # the training SDE


@dataclass
class TrainSettings:
    num_steps: int = 100  # GRPO iterations: sample, score, update
    group_size: int = 8  # samples per prompt (each from its own initial noise)
    prompts_per_step: int = 16  # groups per iteration, over all processes
    sample_batch_size: int = 4  # samples per sampling forward, per process
    train_batch_size: int = 4  # samples per training forward, per process
    inner_epochs: int = 1  # passes over one iteration's samples
    updates_per_epoch: int = 1  # optimizer steps per pass (Flow-GRPO / Identity-GRPO use 2)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    clip_range: float = 1e-3
    adv_clip: float = 5.0
    adv_scaling: Literal["group", "batch", "none"] = "group"
    beta: float = 0.004  # weight of the KL to the reference (the adapter switched off)
    ema_decay: float = 0.9  # 0: no EMA
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) over the first updates
    timestep_fraction: float = 1.0  # share of a sample's stochastic steps trained per pass
    # Flow-GRPO-Fast: only `sde_window_size` consecutive steps are stochastic (and trained), the
    # rest ODE; the window's first step is drawn each iteration from sde_window_range [lo, hi]
    # (empty: anywhere). 0 turns the window off.
    sde_window_size: int = 0
    sde_window_range: list[int] = field(default_factory=list)
    # DanceGRPO: a group's samples start from one initial noise, so their rewards differ only through
    # the stochastic steps, the actions GRPO trains (not through a noise no update can learn from)
    shared_group_noise: bool = False
    cfg_in_training: bool = True  # False: training forwards skip guidance (then the ratio starts != 1)
    skip_zero_advantage: bool = True  # samples of zero-std groups carry no policy gradient
    gradient_checkpointing: bool = False
    # fsdp: the generator transformer, its LoRA and optimizer state sharded over the processes
    # (finetune/sharding.py); none: every process holds all of them
    sharding: Literal["none", "fsdp"] = "none"
    eval_every: int = 0  # iterations; 0: evaluate only before and after training
    save_every: int = 0  # iterations; 0: save only at the end
    keep_checkpoints: int = 2  # complete checkpoints kept (output_dir/checkpoints); a damaged newest falls back
    max_consecutive_skips: int = 5  # iterations in a row skipped for non-finite values stop the run
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    @property
    def samples_per_step(self) -> int:
        return self.prompts_per_step * self.group_size


@dataclass
class GrpoConfig(RunSettings):
    output_dir: str = "runs/grpo"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    guard: GuardConfig = field(default_factory=GuardConfig)  # the reward-hacking guard (finetune/guard.py)
    speed: SpeedSettings = field(default_factory=SpeedSettings)

    def validate(self) -> None:
        self.validate_run()
        self.generator.validate()
        _validate_sampling(self.sampling)
        validate_lora(self.lora)
        if not self.rewards:
            raise ConfigError("rewards: at least one reward is needed")
        validate_reward_specs(self.rewards, "rewards")
        _validate_train(self.train, self.sampling)
        validate_world(self.data)
        validate_guard(self.guard, {"eval/reward", *(f"eval/reward/{r.name}" for r in self.rewards)}, self.data)
        validate_speed(self.speed)
        self.validate_processes(1)

    def validate_inputs(self, generator_given: bool = False, rewards_given: bool = False) -> None:
        """Required inputs are given and every local path exists (hub ids, "tiny" and "toy" are not paths).
        A generator or reward functions handed to the trainer need none of their config paths."""
        if not generator_given:
            self.generator.check_inputs()
        if not rewards_given:
            check_reward_inputs(self.rewards, "rewards")
        check_manifest_inputs(self.data, self.train.eval_every)

    def validate_processes(self, num_processes: int) -> None:
        """The per-step batch must split evenly over processes and sampling batches; an error names
        the overrides that would make this launch pass (processes_fixes)."""
        t = self.train
        per_launch = t.sample_batch_size * num_processes
        if t.samples_per_step % per_launch:
            raise ConfigError(
                f"train.prompts_per_step * train.group_size (= {t.samples_per_step}) must be divisible by "
                f"train.sample_batch_size * num_processes (= {t.sample_batch_size} * {num_processes}); "
                f"{self.processes_fixes(num_processes)}"
            )
        local = t.samples_per_step // num_processes
        if t.updates_per_epoch > local:
            raise ConfigError(
                f"train.updates_per_epoch ({t.updates_per_epoch}) exceeds the samples per process ({local}); "
                f"{self.processes_fixes(num_processes)}"
            )

    def processes_fixes(self, num_processes: int) -> str:
        """The overrides that make validate_processes pass on num_processes: the same samples per step
        in smaller sampling batches (when the processes divide them), or more prompts per step."""
        t = self.train
        fixes = []
        if t.samples_per_step % num_processes == 0:
            local = t.samples_per_step // num_processes
            batch = largest_divisor_at_most(local, t.sample_batch_size)
            same = [f"train.sample_batch_size={batch}"] if batch != t.sample_batch_size else []
            if t.updates_per_epoch > local:
                same.append(f"train.updates_per_epoch={local}")
            fixes.append(f"{' '.join(same)} (the same {t.samples_per_step} samples per step, {local} per process)")
        prompts = t.prompts_per_step + 1
        while ((prompts * t.group_size) % (t.sample_batch_size * num_processes)
               or prompts * t.group_size // num_processes < t.updates_per_epoch):
            prompts += 1
        fixes.append(f"train.prompts_per_step={prompts} ({prompts * t.group_size} samples per step)")
        return f"on {num_processes} process{'es' * (num_processes != 1)} use " + ", or ".join(fixes)

    def batch_arithmetic(self, num_processes: int) -> str:
        """How one step's samples split over processes, sampling forwards and updates (printed at start)."""
        t, processes = self.train, f"{num_processes} process{'es' * (num_processes != 1)}"
        local = t.samples_per_step // num_processes
        updates = t.inner_epochs * t.updates_per_epoch
        low, extra = divmod(local, t.updates_per_epoch)  # split_for_updates: near-equal chunks
        chunk = f"{low}-{low + 1}" if extra else f"{low}"
        return (f"batch: train.prompts_per_step={t.prompts_per_step} x train.group_size={t.group_size} = "
                f"{t.samples_per_step} samples per step; / {processes} = {local} per process; "
                f"/ train.sample_batch_size={t.sample_batch_size} = {-(-local // t.sample_batch_size)} sampling "
                f"forwards per process; train.inner_epochs={t.inner_epochs} x train.updates_per_epoch="
                f"{t.updates_per_epoch} = {updates} updates per step, each on {chunk} samples per process in "
                f"micro-batches of at most train.train_batch_size={t.train_batch_size}")


def _validate_sampling(s: SamplingConfig) -> None:
    validate_sampling(s)
    check_options("sampling.noise", s.noise)
    if s.noise.kind == "ode":
        raise ConfigError("sampling.noise.kind: 'ode' has no log-probabilities to train on; use flow_grpo, linear or cps")


def _validate_train(t: TrainSettings, s: SamplingConfig) -> None:
    require_at_least("train", t, 1, "num_steps", "prompts_per_step", "sample_batch_size", "train_batch_size",
                     "inner_epochs", "updates_per_epoch", "keep_checkpoints", "max_consecutive_skips")
    if t.group_size < 2:
        raise ConfigError(f"train.group_size must be >= 2 (one sample has no spread to learn from), got {t.group_size}")
    require_at_least("train", t, 0, "eval_every", "save_every", "weight_decay", "beta")  # 0: off
    require_positive("train", t, "lr", "max_grad_norm", "clip_range", "adv_clip")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if not 0 < t.timestep_fraction <= 1:
        raise ConfigError(f"train.timestep_fraction must be in (0, 1], got {t.timestep_fraction}")
    if not 0 <= t.sde_window_size <= s.train_steps:
        raise ConfigError(f"train.sde_window_size must be in [0, sampling.train_steps = {s.train_steps}]")
    if t.sde_window_range:
        if not t.sde_window_size:
            raise ConfigError("train.sde_window_range is set but train.sde_window_size is 0")
        last_start = s.train_steps - t.sde_window_size
        if len(t.sde_window_range) != 2 or not 0 <= t.sde_window_range[0] <= t.sde_window_range[1] <= last_start:
            raise ConfigError(
                f"train.sde_window_range must be [lo, hi] with 0 <= lo <= hi <= {last_start} "
                f"(sampling.train_steps - train.sde_window_size), got {t.sde_window_range}"
            )

