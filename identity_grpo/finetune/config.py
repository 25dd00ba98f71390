"""Config sections GRPO and IPRO share: the LoRA, the prompts (manifests or the synthetic world), the
evaluation's sampling fields. The generator section is generators/config.py, the rewards' rewards/spec.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from identity_grpo.core.config_io import ConfigError, check_options, require_at_least, require_local, require_positive
from identity_grpo.finetune.sde import NoiseSchedule


@dataclass
class LoraSettings:
    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.0  # > 0 breaks the on-policy check (training forwards then differ from sampling ones)
    # Module-name suffixes: every attention projection (self- and cross-attention, VACE blocks too).
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class WorldPrompts:
    """The synthetic world's prompts, written on first use (identity_grpo/world/prompt_manifests.py).
    Enabled, they stand in for data.train_manifest / data.eval_manifest, and evaluation adds the
    world's independent identity measure (eval/identity, eval/identity_worst)."""

    enabled: bool = False
    folder: str = "data/synthetic/grpo"
    num_train: int = 256  # prompts of training identities
    num_heldout: int = 32  # prompts of held-out identities, for evaluation
    num_people: list[int] = field(default_factory=lambda: [2, 3])
    seed: int = 0


@dataclass
class SpeedSettings:
    """Fast paths (README "Performance"; python -m identity_grpo.bench measures each). The defaults
    are the plain paths, so a config without this section trains exactly as before."""

    # Prompts whose encoded conditions (text embeddings, reference and conditioning-video latents)
    # are kept and reused by group members, later iterations and IPRO's micro-batches
    # (finetune/condition_cache.py); 0: every batch encodes its own.
    condition_cache: int = 0
    # GRPO: score a batch's clips in a second thread while the next batch samples (the reward and
    # the generator then share the device / CPU cores; it buys time only when they have spare).
    overlap_rewards: bool = False
    compile: bool = False  # torch.compile the generator transformer's blocks (GPU; slow to start)


def validate_speed(s: SpeedSettings) -> None:
    require_at_least("speed", s, 0, "condition_cache")


@dataclass
class DataConfig:
    train_manifest: str = ""  # prompts + references: .jsonl, or the original release's .csv
    eval_manifest: str = ""  # held-out prompts for evaluation; empty: no evaluation
    check_files: bool = True  # every reference image exists (and decodes, for training) before training starts
    world: WorldPrompts = field(default_factory=WorldPrompts)


@dataclass
class EvalSampling:
    """The sampling section's fields GRPO and IPRO share: their evaluation is the same."""

    train_steps: int = 25  # denoising steps of a training sample
    eval_steps: int = 50  # steps of an evaluation sample
    eval_noise: NoiseSchedule = field(default_factory=lambda: NoiseSchedule(kind="ode"))  # deterministic
    # Evaluation resolution; 0 keeps the training value of the generator options.
    eval_height: int = 0
    eval_width: int = 0
    eval_num_frames: int = 0
    eval_batch_size: int = 1  # per process
    grid_prompts: int = 4  # held-out prompts shown in the sample grids (output_dir/samples)


@dataclass
class GuardConfig:
    """The reward-hacking guard (finetune/guard.py): a held-out metric the policy is not trained on,
    watched at every evaluation. Off while `metric` is empty."""

    metric: str = ""  # e.g. eval/identity (the world's independent measure); a real run: a face score its reward lacks
    reward: str = ""  # the training reward as evaluated; empty: the method's (GRPO eval/reward, IPRO eval/face_reward)
    max_drop: float = 0.05  # the guard this far (relative) below its best while the reward is above its value there: hacking
    final: Literal["last", "best_guard"] = "last"  # which weights final/ holds: the last, or the best evaluation's by the guard


def evaluating(d: DataConfig) -> bool:
    """Whether the run has held-out prompts to evaluate on."""
    return d.world.num_heldout > 0 if d.world.enabled else bool(d.eval_manifest)


def validate_guard(g: GuardConfig, trained: set[str], d: DataConfig) -> None:
    """trained: the evaluation metrics that are the training reward (a guard that is one of them is no guard)."""
    if not g.metric:
        if g.final != "last":
            raise ConfigError(f"guard.final: {g.final} needs guard.metric (e.g. eval/identity)")
        return
    if not g.metric.startswith("eval/") or (g.reward and not g.reward.startswith("eval/")):
        raise ConfigError(f"guard.metric / guard.reward: an evaluation metric, eval/<name>, got {g.metric!r} / {g.reward!r}")
    if g.metric in trained or g.metric == g.reward:
        raise ConfigError(f"guard.metric: {g.metric} is what the policy is trained on; the guard must be held out "
                          "(e.g. eval/identity)")
    if not 0 <= g.max_drop < 1:
        raise ConfigError(f"guard.max_drop must be in [0, 1), got {g.max_drop}")
    if not evaluating(d):
        raise ConfigError("guard.metric is set but there is no held-out evaluation (data.eval_manifest or "
                          "data.world.num_heldout)")


def check_manifest_inputs(d: DataConfig, eval_every: int) -> None:
    """The prompt manifests exist (the synthetic world writes its own when training starts)."""
    if d.world.enabled:
        return
    if not d.train_manifest:
        raise ConfigError("data.train_manifest: required (a prompt manifest, .jsonl or .csv)")
    require_local(d.train_manifest, "data.train_manifest", "file")
    if d.eval_manifest:
        require_local(d.eval_manifest, "data.eval_manifest", "file")
    elif eval_every:
        raise ConfigError("train.eval_every is set but data.eval_manifest is empty")


def validate_sampling(s: "EvalSampling") -> None:
    """The sampling fields GRPO and IPRO share (evaluation is shared)."""
    require_at_least("sampling", s, 1, "train_steps", "eval_steps", "eval_batch_size")
    # 0 keeps the generator's training size; grid_prompts 0 draws no sample grid
    require_at_least("sampling", s, 0, "eval_height", "eval_width", "eval_num_frames", "grid_prompts")
    check_options("sampling.eval_noise", s.eval_noise)


def validate_lora(lora: LoraSettings) -> None:
    require_at_least("lora", lora, 1, "r")
    require_positive("lora", lora, "alpha")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {lora.dropout}")
    if not lora.target_modules:
        raise ConfigError("lora.target_modules: empty")


def validate_world(d: DataConfig) -> None:
    w = d.world
    if not w.enabled:
        return
    if d.train_manifest or d.eval_manifest:
        raise ConfigError("data.world.enabled: the world writes its own manifests; leave data.train_manifest "
                          "and data.eval_manifest empty (or disable data.world)")
    require_at_least("data.world", w, 1, "num_train")
    require_at_least("data.world", w, 0, "num_heldout")
    if not w.num_people or any(not 1 <= n <= 4 for n in w.num_people):
        raise ConfigError(f"data.world.num_people: values in [1, 4], got {w.num_people}")


def largest_divisor_at_most(n: int, cap: int) -> int:
    """The largest d <= cap dividing n (1 at worst): the biggest per-process batch that splits n evenly."""
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)
