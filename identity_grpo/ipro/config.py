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

from dataclasses import dataclass, field
from typing import Literal

from identity_grpo.core.config_io import ConfigError, check_options, require_local
from identity_grpo.core.sections import HubConfig, WandbConfig
from identity_grpo.faces.analyzer import FaceAnalyzerConfig
from identity_grpo.finetune.config import DataConfig, LoraSettings, check_manifest_inputs, validate_lora, validate_world
from identity_grpo.finetune.sde import NoiseSchedule
from identity_grpo.generators.config import GeneratorConfig
from identity_grpo.rewards.registry import check_reward_inputs, validate_reward_specs
from identity_grpo.rewards.spec import RewardSpec
from identity_grpo.world.face_models import WorldFaceSettings


@dataclass
class IproSampling:
    """Field names as GRPO's SamplingConfig where they mean the same (evaluation is shared)."""

    train_steps: int = 40  # Euler ODE steps of a training sample; the last train.last_steps carry gradients
    eval_steps: int = 40
    eval_noise: NoiseSchedule = field(default_factory=lambda: NoiseSchedule(kind="ode"))
    eval_height: int = 0  # 0: the generator's training value
    eval_width: int = 0
    eval_num_frames: int = 0
    eval_batch_size: int = 1  # per process
    grid_prompts: int = 4  # held-out prompts shown in the sample grids (output_dir/samples)


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
    # Pixel frames decoded with gradients (0: all). The face reward is a per-frame mean, so the reward
    # over randomly chosen frames is an unbiased estimate of it, and the decoder's activations (~12.7 KB
    # per output pixel-frame under bf16: ~410 GB for 81 frames at 480x832) are kept only for those.
    # Taken as whole latent frames (4 pixel frames each); the others decode without gradients.
    # Sized by `python -m identity_grpo.plan`; the IPRO trainer does not read it yet.
    decoder_grad_frames: int = 0
    gradient_checkpointing: bool = False  # the same for the transformer blocks
    eval_every: int = 0  # steps; 0: evaluate only before and after training
    save_every: int = 0  # steps; 0: save only at the end
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    def step_weights(self) -> list[float]:
        return list(self.kl_step_weights) or [1.0] * self.last_steps


@dataclass
class IproConfig:
    output_dir: str = "runs/ipro"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sampling: IproSampling = field(default_factory=IproSampling)
    lora: LoraSettings = field(default_factory=LoraSettings)
    face_reward: FaceRewardConfig = field(default_factory=FaceRewardConfig)
    eval_rewards: list[RewardSpec] = field(default_factory=list)  # what evaluation scores as eval/reward
    data: DataConfig = field(default_factory=DataConfig)
    train: IproTrainSettings = field(default_factory=IproTrainSettings)
    hub: HubConfig = field(default_factory=HubConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    resume: bool = True  # continue from output_dir/state if a previous run left one

    def validate(self) -> None:
        g, s, t = self.generator, self.sampling, self.train
        g.validate()
        if s.train_steps < 1 or s.eval_steps < 1:
            raise ConfigError("sampling.train_steps and sampling.eval_steps must be >= 1")
        if min(s.eval_height, s.eval_width, s.eval_num_frames, s.grid_prompts) < 0 or s.eval_batch_size < 1:
            raise ConfigError("sampling.eval_height/eval_width/eval_num_frames/grid_prompts must be >= 0, "
                              "eval_batch_size >= 1")
        check_options("sampling.eval_noise", s.eval_noise)
        validate_lora(self.lora)
        _validate_train(t, s, g.options.num_frames)
        _validate_face_reward(self.face_reward)
        validate_reward_specs(self.eval_rewards, "eval_rewards")
        validate_world(self.data)
        self.validate_processes(1)
        if self.hub.push and not self.hub.repo_id:
            raise ConfigError("hub.push is set but hub.repo_id is empty")

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
        t = self.train
        if t.batch_size % (t.micro_batch_size * num_processes):
            raise ConfigError(f"train.batch_size ({t.batch_size}) must be divisible by train.micro_batch_size * "
                              f"num_processes (= {t.micro_batch_size} * {num_processes})")


def _validate_train(t: IproTrainSettings, s: IproSampling, frames: int) -> None:
    for name in ("num_steps", "batch_size", "micro_batch_size", "last_steps"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    if t.last_steps > s.train_steps:
        raise ConfigError(f"train.last_steps ({t.last_steps}) exceeds sampling.train_steps ({s.train_steps})")
    if t.kl_step_weights and len(t.kl_step_weights) != t.last_steps:
        raise ConfigError(f"train.kl_step_weights: one weight per graded step ({t.last_steps}), "
                          f"got {len(t.kl_step_weights)}")
    if any(w < 0 for w in t.kl_step_weights):
        raise ConfigError(f"train.kl_step_weights must be >= 0, got {t.kl_step_weights}")
    if t.lr <= 0 or t.weight_decay < 0 or t.max_grad_norm < 0:
        raise ConfigError("train.lr must be > 0, train.weight_decay and train.max_grad_norm >= 0")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"train.betas: two values in [0, 1), got {t.betas}")
    if t.reward_weight <= 0 or t.kl_weight < 0:
        raise ConfigError(f"train.reward_weight must be > 0 and train.kl_weight >= 0, got {t.reward_weight}, {t.kl_weight}")
    if t.eval_every < 0 or t.save_every < 0:
        raise ConfigError("train.eval_every and train.save_every must be >= 0")
    if not 0 <= t.decoder_grad_frames <= frames:
        raise ConfigError(f"train.decoder_grad_frames must be in [0, {frames}] (0: all; the generator makes {frames} "
                          f"frames), got {t.decoder_grad_frames}")


def _validate_face_reward(f: FaceRewardConfig) -> None:
    if f.kind == "world":
        check_options("face_reward.world", f.world)
        return
    a = f.arcface
    try:
        a.faces.validate()
    except ConfigError as error:
        raise ConfigError(f"face_reward.arcface.{error}") from None
    if a.pool_frames < 1:
        raise ConfigError(f"face_reward.arcface.pool_frames must be >= 1, got {a.pool_frames}")
    if not -1.0 <= a.min_similarity <= 1.0:
        raise ConfigError(f"face_reward.arcface.min_similarity: a cosine in [-1, 1], got {a.min_similarity}")
