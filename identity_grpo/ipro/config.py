"""The reward-gradient (IPRO) experiment config: one YAML file in configs/ipro/, validated before any model loads.

    cfg = load_config(IproConfig, "configs/ipro/synthetic_vace.yaml", ["train.lr=1e-4"])  # runs validate()
    cfg.validate_inputs()                               # the files it names exist
    cfg.validate_processes(accelerator.num_processes)  # once the launch is known

Generator, LoRA, data, hub and wandb sections are GRPO's (identity_grpo/finetune/config.py); the generator
section also takes `kind: i2v` (Wan image-to-video, options under `generator.i2v`). Sampling and
training are IPRO's own: an Euler ODE from noise, gradients through the last `train.last_steps`
steps, loss = reward_weight * (-face reward) + kl_weight * KL (the paper's 0.1 and 1.0), Adam.
Evaluation reuses GRPO's (same held-out noise per prompt, same metric names), scored by
`eval_rewards` (e.g. the stage-1 reward model) plus the face reward as eval/face_reward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from identity_grpo.core.config_io import ConfigError, check_options, require_at_least, require_local, require_positive
from identity_grpo.core.sections import RunSettings
from identity_grpo.faces.analyzer import FaceAnalyzerConfig
from identity_grpo.finetune.config import (DataConfig, EvalSampling, GuardConfig, LoraSettings, SpeedSettings,
                                          check_manifest_inputs, largest_divisor_at_most, validate_guard, validate_lora,
                                          validate_sampling, validate_speed,
                                          validate_world)
from identity_grpo.finetune.sde import NoiseSchedule
from identity_grpo.generators.config import GeneratorConfig
from identity_grpo.rewards.registry import check_reward_inputs, validate_reward_specs
from identity_grpo.rewards.spec import RewardSpec
from identity_grpo.world.face_models import WorldFaceSettings


@dataclass
class IproSampling(EvalSampling):
    train_steps: int = 40  # Euler ODE steps of a training sample; the last train.last_steps carry gradients
    eval_steps: int = 40


@dataclass
class ArcFaceRewardSettings:
    """Real faces: insightface's detector finds them, a PyTorch ArcFace (iresnet) scores them."""

    recognizer: str = ""  # an arcface_torch backbone.pth (insightface recognition/arcface_torch)
    arch: Literal["r18", "r34", "r50", "r100"] = "r100"
    faces: FaceAnalyzerConfig = field(default_factory=FaceAnalyzerConfig)  # the detector's model pack
    pool_frames: int = 16  # frames taken from each pool video (a manifest row's `pool_paths`)
    pool_root: str = ""  # relative pool_paths are resolved against it
    min_similarity: float = 0.2  # a face below this cosine to every person is nobody's


@dataclass
class FaceRewardConfig:
    kind: Literal["world", "arcface"] = "world"
    world: WorldFaceSettings = field(default_factory=WorldFaceSettings)
    arcface: ArcFaceRewardSettings = field(default_factory=ArcFaceRewardSettings)


@dataclass
class IproTrainSettings:
    num_steps: int = 100  # optimizer steps
    batch_size: int = 64  # samples per optimizer step, over all processes
    micro_batch_size: int = 1  # samples per forward, per process; the rest is gradient accumulation
    lr: float = 2e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam
    weight_decay: float = 0.0  # Adam's L2 term (not decoupled)
    max_grad_norm: float = 1.0  # 0: no clipping
    last_steps: int = 4  # K: the late denoising steps that carry gradients
    reward_weight: float = 0.1
    kl_weight: float = 1.0
    # w_k of the K steps, first to last; empty: 1 each.
    kl_step_weights: list[float] = field(default_factory=list)
    decoder_checkpointing: bool = True  # recompute the VAE decoder in backward instead of storing it
    # Pixel frames decoded with gradients and scored by the face reward (0: all), rounded up to whole
    # latent chunks of 4 frames, drawn per sample in proportion to the frames they hold
    # (ipro/decoder_frames.py): the reward over them is an unbiased estimate of the clip's per-frame
    # mean (train/reward logs that estimate), and the decoder keeps activations (~12.7 KB per output
    # pixel-frame under bf16: ~410 GB for 81 frames at 480x832) only for the drawn chunks, one at a time
    # with decoder_checkpointing (generators/causal_decode.py).
    decoder_grad_frames: int = 0
    gradient_checkpointing: bool = False  # the same for the transformer blocks
    sharding: Literal["none", "fsdp"] = "none"  # fsdp: the transformer, LoRA and Adam state sharded (finetune/sharding.py)
    # Processes that split each sample's video tokens (generators/sequence_parallel.py; 1: off): for
    # samples whose activations do not fit one GPU (81x480x832 on 14B). Wan I2V only; it must divide
    # the processes, the transformer's attention heads and the token count of every sample.
    sequence_parallel: int = 1
    eval_every: int = 0  # steps; 0: evaluate only before and after training
    save_every: int = 0  # steps; 0: save only at the end
    keep_checkpoints: int = 2  # complete checkpoints kept (output_dir/checkpoints); a damaged newest falls back
    max_consecutive_skips: int = 5  # steps in a row skipped for non-finite values stop the run
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    def step_weights(self) -> list[float]:
        return list(self.kl_step_weights) or [1.0] * self.last_steps


@dataclass
class IproConfig(RunSettings):
    output_dir: str = "runs/ipro"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sampling: IproSampling = field(default_factory=IproSampling)
    lora: LoraSettings = field(default_factory=LoraSettings)
    face_reward: FaceRewardConfig = field(default_factory=FaceRewardConfig)
    eval_rewards: list[RewardSpec] = field(default_factory=list)  # what evaluation scores as eval/reward
    data: DataConfig = field(default_factory=DataConfig)
    train: IproTrainSettings = field(default_factory=IproTrainSettings)
    guard: GuardConfig = field(default_factory=GuardConfig)  # the reward-hacking guard (finetune/guard.py)
    speed: SpeedSettings = field(default_factory=SpeedSettings)

    def validate(self) -> None:
        self.validate_run()
        self.generator.validate()
        validate_sampling(self.sampling)
        validate_lora(self.lora)
        _validate_train(self.train, self.sampling, self.generator.options.num_frames)
        _validate_face_reward(self.face_reward)
        validate_reward_specs(self.eval_rewards, "eval_rewards")
        validate_world(self.data)
        validate_guard(self.guard, {"eval/face_reward"}, self.data)
        validate_speed(self.speed)
        _validate_sequence_parallel(self)
        self.validate_processes(self.train.sequence_parallel)  # the smallest launch it can run on

    def validate_inputs(self, generator_given: bool = False, face_reward_given: bool = False,
                        eval_rewards_given: bool = False) -> None:
        """Required inputs are given and every local path exists; parts handed to the trainer need none."""
        if not generator_given:
            self.generator.check_inputs()
        if self.face_reward.kind == "arcface" and not face_reward_given:
            a = self.face_reward.arcface
            if not a.recognizer:
                raise ConfigError("face_reward.arcface.recognizer: required (an arcface_torch backbone .pth)")
            require_local(a.recognizer, "face_reward.arcface.recognizer", "file")
        if not eval_rewards_given:
            check_reward_inputs(self.eval_rewards, "eval_rewards")
        d = self.data
        evaluating = d.world.num_heldout > 0 if d.world.enabled else bool(d.eval_manifest)
        if evaluating and not self.eval_rewards and not eval_rewards_given:
            raise ConfigError("eval_rewards: evaluation needs at least one reward to report as eval/reward (e.g. "
                              "{name: reward_model, path: runs/reward_synthetic/final}); the face reward is added "
                              "as eval/face_reward")
        check_manifest_inputs(d, self.train.eval_every)

    def validate_processes(self, num_processes: int) -> None:
        """train.batch_size must split into micro-batches over processes; an error names the
        overrides that would make this launch pass (processes_fixes)."""
        t = self.train
        if num_processes % t.sequence_parallel:
            fewer = math.gcd(num_processes, t.sequence_parallel)  # still divides the heads and tokens
            fix, split = f"train.sequence_parallel={fewer}", t.micro_batch_size * num_processes // fewer
            if t.batch_size % split:
                fix += f" train.batch_size={(t.batch_size // split + 1) * split}"
            raise ConfigError(f"train.sequence_parallel ({t.sequence_parallel}) must divide the number of processes "
                              f"({num_processes}); on {num_processes} processes use {fix} (check that it still fits with "
                              f"python -m identity_grpo.plan; or launch a multiple of {t.sequence_parallel} processes)")
        groups = num_processes // t.sequence_parallel  # each group of processes runs its own samples
        if t.batch_size % (t.micro_batch_size * groups):
            counted = "num_processes" if t.sequence_parallel == 1 else "num_processes / train.sequence_parallel"
            raise ConfigError(f"train.batch_size ({t.batch_size}) must be divisible by train.micro_batch_size * "
                              f"{counted} (= {t.micro_batch_size} * {groups}); {self.processes_fixes(num_processes)}")

    def processes_fixes(self, num_processes: int) -> str:
        """The overrides that make validate_processes pass on num_processes: the same batch in smaller
        micro-batches (when the processes divide it), or the next batch size that splits."""
        t = self.train
        fixes = []
        groups = num_processes // t.sequence_parallel  # each group of processes runs its own samples
        if t.batch_size % groups == 0:
            local = t.batch_size // groups
            fixes.append(f"train.micro_batch_size={largest_divisor_at_most(local, t.micro_batch_size)} "
                         f"(the same batch of {t.batch_size}, {local} per {'process' if groups == num_processes else 'group'})")
        split = t.micro_batch_size * groups
        fixes.append(f"train.batch_size={(t.batch_size // split + 1) * split}")
        return f"on {num_processes} process{'es' * (num_processes != 1)} use " + ", or ".join(fixes)

    def batch_arithmetic(self, num_processes: int) -> str:
        """How the optimizer step's samples split over processes and accumulation (printed at start)."""
        t, processes = self.train, f"{num_processes} process{'es' * (num_processes != 1)}"
        if t.sequence_parallel > 1:
            num_processes //= t.sequence_parallel
            processes = f"{num_processes} groups of train.sequence_parallel={t.sequence_parallel} processes"
        accumulation = t.batch_size // (num_processes * t.micro_batch_size)
        return (f"batch: train.batch_size={t.batch_size} = {processes} x train.micro_batch_size={t.micro_batch_size} "
                f"x {accumulation} accumulated forwards (samples per optimizer step)")


def _validate_train(t: IproTrainSettings, s: IproSampling, frames: int) -> None:
    require_at_least("train", t, 1, "num_steps", "batch_size", "micro_batch_size", "last_steps", "keep_checkpoints",
                     "max_consecutive_skips")
    require_at_least("train", t, 0, "eval_every", "save_every", "weight_decay", "max_grad_norm", "kl_weight")  # 0: off
    require_positive("train", t, "lr", "reward_weight")
    if t.last_steps > s.train_steps:
        raise ConfigError(f"train.last_steps ({t.last_steps}) exceeds sampling.train_steps ({s.train_steps})")
    if t.kl_step_weights and len(t.kl_step_weights) != t.last_steps:
        raise ConfigError(f"train.kl_step_weights: one weight per graded step ({t.last_steps}), "
                          f"got {len(t.kl_step_weights)}")
    if any(w < 0 for w in t.kl_step_weights):
        raise ConfigError(f"train.kl_step_weights must be >= 0, got {t.kl_step_weights}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"train.betas: two values in [0, 1), got {t.betas}")
    if not 0 <= t.decoder_grad_frames <= frames:
        raise ConfigError(f"train.decoder_grad_frames must be in [0, {frames}] (0: all; the generator makes {frames} "
                          f"frames), got {t.decoder_grad_frames}")


WAN_CELL = (4, 16)  # pixel frames per latent frame; pixels per token side (VAE 8 x patch 2)


def _validate_sequence_parallel(cfg: IproConfig) -> None:
    """Only the Wan I2V transformer declares its split; every sample's tokens split evenly."""
    sp = cfg.train.sequence_parallel
    require_at_least("train", cfg.train, 1, "sequence_parallel")
    if sp == 1:
        return
    g, s = cfg.generator, cfg.sampling
    if g.kind != "i2v":
        raise ConfigError(f"train.sequence_parallel={sp} needs generator.kind i2v (diffusers declares the token split "
                          f"of WanTransformer3DModel only; {g.kind}'s transformer cannot split)")
    split_points = {"proj_out", "patch_embedding"} & set(cfg.lora.target_modules)  # where tokens split or gather
    if split_points:
        raise ConfigError(f"lora.target_modules: {sorted(split_points)[0]} is where train.sequence_parallel splits or "
                          "gathers the tokens; a LoRA there would see the other side's shapes")
    o = g.options
    for where, height, width, frames in (("generator.i2v", o.height, o.width, o.num_frames),
                                         ("sampling.eval_*", s.eval_height or o.height, s.eval_width or o.width,
                                          s.eval_num_frames or o.num_frames)):
        tokens = ((frames - 1) // WAN_CELL[0] + 1) * (height // WAN_CELL[1]) * (width // WAN_CELL[1])
        if tokens % sp:
            raise ConfigError(f"train.sequence_parallel={sp} must divide the {tokens} tokens of a {width}x{height}x"
                              f"{frames} sample ({where})")


def _validate_face_reward(f: FaceRewardConfig) -> None:
    if f.kind == "world":
        check_options("face_reward.world", f.world)
        return
    a = f.arcface
    try:
        a.faces.validate()
    except ConfigError as error:
        raise ConfigError(f"face_reward.arcface.{error}") from None
    require_at_least("face_reward.arcface", a, 1, "pool_frames")
    if not -1.0 <= a.min_similarity <= 1.0:
        raise ConfigError(f"face_reward.arcface.min_similarity: a cosine in [-1, 1], got {a.min_similarity}")
