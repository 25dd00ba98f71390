"""Stage-2 experiment config: one YAML file in configs/grpo/, validated before any model loads.

    cfg = load_config(GrpoConfig, "configs/grpo/vace_1.3b.yaml", ["train.lr=5e-5"])  # runs validate()
    cfg.validate_inputs()                                # the files it names exist (before any model loads)
    cfg.validate_processes(accelerator.num_processes)   # once the launch is known

`validate` checks what the file alone decides (numbers, divisibility, combinations), so every YAML
in configs/ loads anywhere; `validate_inputs` checks the machine: required inputs given and every
path present. Every error names the field (`train.group_size`, `rewards[1].weight`, ...).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from identity_grpo.generators.phantom import PhantomOptions
from identity_grpo.generators.vace import VaceOptions
from identity_grpo.sde import NoiseSchedule
from reward_model.config import HubConfig, WandbConfig
from reward_model.config_io import ConfigError

TINY = "tiny"  # generator.pretrained value that builds random tiny components (tests, no download)
TOY = "toy"  # generator.pretrained value: the toy generator pretrained on the synthetic world (cached)
BUILT_IN = (TINY, TOY)  # generator.pretrained values that are not paths or hub ids
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _ode() -> NoiseSchedule:
    return NoiseSchedule(kind="ode")


@dataclass
class GeneratorConfig:
    kind: Literal["vace", "phantom"] = "vace"
    # A diffusers-layout folder or hub id ("Wan-AI/Wan2.1-VACE-1.3B-diffusers"); "tiny" (random test
    # components) or "toy" (pretrained on the synthetic world on first use, cached in data/cache).
    pretrained: str = ""
    # phantom only: an original Phantom-Wan checkpoint (.pth / .safetensors) that replaces the
    # T2V transformer's weights; empty: the folder's transformer/ is used as it is.
    phantom_checkpoint: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    vae_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0  # weight seed of the tiny components
    toy_cache_dir: str = "data/cache/toy_generators"  # "toy": where the pretrained toy generators are kept
    vace: VaceOptions = field(default_factory=VaceOptions)
    phantom: PhantomOptions = field(default_factory=PhantomOptions)

    @property
    def options(self) -> VaceOptions | PhantomOptions:
        """The options of the configured kind (training resolution and guidance)."""
        return self.vace if self.kind == "vace" else self.phantom


@dataclass
class SamplingConfig:
    train_steps: int = 25  # SDE steps of a training rollout
    eval_steps: int = 50  # steps of an evaluation sample
    noise: NoiseSchedule = field(default_factory=NoiseSchedule)  # the training SDE
    eval_noise: NoiseSchedule = field(default_factory=_ode)  # evaluation is deterministic (ODE)
    # Evaluation resolution; 0 keeps the training value of the generator options.
    eval_height: int = 0
    eval_width: int = 0
    eval_num_frames: int = 0
    eval_batch_size: int = 1  # per process
    grid_prompts: int = 4  # held-out prompts shown in the sample grids (output_dir/samples)


@dataclass
class LoraSettings:
    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.0  # > 0 breaks the on-policy check (training forwards then differ from sampling ones)
    # Module-name suffixes: every attention projection (self- and cross-attention, VACE blocks too).
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class RewardSpec:
    """One reward of the weighted sum; `name` is a key of identity_grpo.rewards' registry."""

    name: str = "reward_model"
    weight: float = 1.0
    path: str = ""  # reward_model: a folder written by RewardModel.save_pretrained (or the original release)
    options: dict[str, Any] = field(default_factory=dict)  # passed to the reward's builder


@dataclass
class WorldPrompts:
    """The synthetic world's prompts, written on first use (identity_grpo/synthetic/world_data.py).
    Enabled, they stand in for data.train_manifest / data.eval_manifest, and evaluation adds the
    world's independent identity measure (eval/identity, eval/identity_worst)."""

    enabled: bool = False
    folder: str = "data/synthetic/grpo"
    num_train: int = 256  # prompts of training identities
    num_heldout: int = 32  # prompts of held-out identities, for evaluation
    num_people: list[int] = field(default_factory=lambda: [2, 3])
    seed: int = 0


@dataclass
class DataConfig:
    train_manifest: str = ""  # prompts + references: .jsonl, or the original release's .csv
    eval_manifest: str = ""  # held-out prompts for evaluation; empty: no evaluation
    check_files: bool = True  # stat every reference image before training starts
    world: WorldPrompts = field(default_factory=WorldPrompts)


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
    cfg_in_training: bool = True  # False: training forwards skip guidance (then the ratio starts != 1)
    skip_zero_advantage: bool = True  # samples of zero-std groups carry no policy gradient
    gradient_checkpointing: bool = False
    eval_every: int = 0  # iterations; 0: evaluate only before and after training
    save_every: int = 0  # iterations; 0: save only at the end
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    @property
    def samples_per_step(self) -> int:
        return self.prompts_per_step * self.group_size


@dataclass
class GrpoConfig:
    output_dir: str = "runs/grpo"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    hub: HubConfig = field(default_factory=HubConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    resume: bool = True  # continue from output_dir/state if a previous run left one

    def validate(self) -> None:
        validate_generator(self.generator)
        _validate_sampling(self.sampling)
        _validate_lora(self.lora)
        _validate_rewards(self.rewards)
        _validate_train(self.train, self.sampling)
        _validate_world(self.data)
        self.validate_processes(1)
        if self.hub.push and not self.hub.repo_id:
            raise ConfigError("hub.push is set but hub.repo_id is empty")

    def validate_inputs(self, generator_given: bool = False, rewards_given: bool = False) -> None:
        """Required inputs are given and every local path exists (hub ids, "tiny" and "toy" are not paths).
        A generator or reward functions handed to the trainer need none of their config paths."""
        if not generator_given:
            check_generator_inputs(self.generator)
        if not rewards_given:
            check_reward_inputs(self.rewards, "rewards")
        check_manifest_inputs(self.data, self.train.eval_every)

    def validate_processes(self, num_processes: int) -> None:
        """The per-step batch must split evenly over processes and sampling batches."""
        t = self.train
        per_launch = t.sample_batch_size * num_processes
        if t.samples_per_step % per_launch:
            raise ConfigError(
                f"train.prompts_per_step * train.group_size (= {t.samples_per_step}) must be divisible by "
                f"train.sample_batch_size * num_processes (= {t.sample_batch_size} * {num_processes})"
            )
        local = t.samples_per_step // num_processes
        if t.updates_per_epoch > local:
            raise ConfigError(
                f"train.updates_per_epoch ({t.updates_per_epoch}) exceeds the samples per process ({local})"
            )


def is_hub_id(value: str) -> bool:
    """"owner/name" that is not a local path: loaded from the Hub (or its cache) by the library."""
    return bool(_HUB_ID.fullmatch(value)) and not Path(value).exists()


def check_generator_inputs(g: GeneratorConfig) -> None:
    """The generator's weights are named and its local files exist (hub ids, "tiny" and "toy" are not paths)."""
    if not g.pretrained:
        raise ConfigError("generator.pretrained: required (a diffusers folder, a hub id, 'tiny' or 'toy')")
    if g.pretrained not in BUILT_IN and not is_hub_id(g.pretrained):
        _require_local(g.pretrained, "generator.pretrained", "folder")
    if g.phantom_checkpoint:
        _require_local(g.phantom_checkpoint, "generator.phantom_checkpoint", "file")


def check_reward_inputs(specs: list[RewardSpec], section: str) -> None:
    """Every reward's files exist; the reward model needs its trained folder (`section`: the YAML key)."""
    for i, spec in enumerate(specs):
        if spec.name == "reward_model" and not spec.path:
            raise ConfigError(f"{section}[{i}].path: required for reward_model (a trained reward model folder)")
        if spec.path:
            _require_local(spec.path, f"{section}[{i}].path", "folder" if spec.name == "reward_model" else "path")


def check_manifest_inputs(d: DataConfig, eval_every: int) -> None:
    """The prompt manifests exist (the synthetic world writes its own when training starts)."""
    if d.world.enabled:
        return
    if not d.train_manifest:
        raise ConfigError("data.train_manifest: required (a prompt manifest, .jsonl or .csv)")
    _require_local(d.train_manifest, "data.train_manifest", "file")
    if d.eval_manifest:
        _require_local(d.eval_manifest, "data.eval_manifest", "file")
    elif eval_every:
        raise ConfigError("train.eval_every is set but data.eval_manifest is empty")


def _require_local(value: str, field_name: str, kind: str) -> None:
    path = Path(value)
    exists = path.is_file() if kind == "file" else path.is_dir() if kind == "folder" else path.exists()
    if not exists:
        raise ConfigError(f"{field_name}: {kind} not found: {value}")


def _options_error(field_name: str, options) -> None:
    try:
        options.validate()
    except ValueError as error:
        raise ConfigError(f"{field_name}: {error}") from None


def validate_generator(g: GeneratorConfig) -> None:
    if g.phantom_checkpoint and g.kind != "phantom":
        raise ConfigError("generator.phantom_checkpoint: only for generator.kind = phantom")
    _options_error(f"generator.{g.kind}", g.options)


def _validate_sampling(s: SamplingConfig) -> None:
    if s.train_steps < 1 or s.eval_steps < 1:
        raise ConfigError("sampling.train_steps and sampling.eval_steps must be >= 1")
    _options_error("sampling.noise", s.noise)
    _options_error("sampling.eval_noise", s.eval_noise)
    if s.noise.kind == "ode":
        raise ConfigError("sampling.noise.kind: 'ode' has no log-probabilities to train on; use flow_grpo or linear")
    if min(s.eval_height, s.eval_width, s.eval_num_frames, s.grid_prompts) < 0 or s.eval_batch_size < 1:
        raise ConfigError("sampling.eval_height/eval_width/eval_num_frames/grid_prompts must be >= 0, eval_batch_size >= 1")


def _validate_lora(lora: LoraSettings) -> None:
    if lora.r < 1 or lora.alpha <= 0:
        raise ConfigError(f"lora.r must be >= 1 and lora.alpha > 0, got {lora.r} and {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules:
        raise ConfigError("lora.target_modules: empty")


def _validate_rewards(rewards: list[RewardSpec]) -> None:
    if not rewards:
        raise ConfigError("rewards: at least one reward is needed")
    seen = set()
    for i, spec in enumerate(rewards):
        if not spec.name:
            raise ConfigError(f"rewards[{i}].name: empty")
        if spec.name in seen:
            raise ConfigError(f"rewards[{i}].name: {spec.name!r} appears twice")
        seen.add(spec.name)
        if not spec.weight > 0:
            raise ConfigError(f"rewards[{i}].weight must be > 0, got {spec.weight}")


def _validate_world(d: DataConfig) -> None:
    w = d.world
    if not w.enabled:
        return
    if d.train_manifest or d.eval_manifest:
        raise ConfigError("data.world.enabled: the world writes its own manifests; leave data.train_manifest "
                          "and data.eval_manifest empty (or disable data.world)")
    if w.num_train < 1 or w.num_heldout < 0:
        raise ConfigError(f"data.world: num_train must be >= 1 and num_heldout >= 0, got {w.num_train}, {w.num_heldout}")
    if not w.num_people or any(not 1 <= n <= 4 for n in w.num_people):
        raise ConfigError(f"data.world.num_people: values in [1, 4], got {w.num_people}")


def _validate_train(t: TrainSettings, s: SamplingConfig) -> None:
    positive = ("num_steps", "group_size", "prompts_per_step", "sample_batch_size", "train_batch_size",
                "inner_epochs", "updates_per_epoch")
    for name in positive:
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.group_size < 2:
        raise ConfigError("train.group_size must be >= 2: a group of one has no spread to learn from")
    if t.lr <= 0 or t.weight_decay < 0 or t.max_grad_norm <= 0:
        raise ConfigError("train.lr and train.max_grad_norm must be > 0, train.weight_decay >= 0")
    if t.clip_range <= 0 or t.adv_clip <= 0 or t.beta < 0:
        raise ConfigError("train.clip_range and train.adv_clip must be > 0, train.beta >= 0")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if not 0 < t.timestep_fraction <= 1:
        raise ConfigError(f"train.timestep_fraction must be in (0, 1], got {t.timestep_fraction}")
    if t.eval_every < 0 or t.save_every < 0:
        raise ConfigError("train.eval_every and train.save_every must be >= 0")
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
