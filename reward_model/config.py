"""Stage-1 experiment config: one YAML file in configs/reward/, validated before any model loads."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from identity_grpo.core.config_io import ConfigError
from identity_grpo.core.sections import HubConfig, WandbConfig
from reward_model.model import RewardModelConfig


@dataclass
class SyntheticPairsConfig:
    """Pairs built from the synthetic world when no manifests are given."""

    out_dir: str = "data/synthetic/pairs"
    num_train: int = 3000
    num_val: int = 200
    num_test: int = 400
    num_frames: int = 8
    height: int = 48
    width: int = 64
    seed: int = 0


@dataclass
class DataConfig:
    # Pair manifests (.jsonl/.json/.csv/.parquet, or VideoAlign CSVs). Empty: build synthetic pairs.
    train_manifest: str = ""
    val_manifest: str = ""
    test_manifest: str = ""
    synthetic: SyntheticPairsConfig = field(default_factory=SyntheticPairsConfig)
    check_files: bool = True  # stat every video and reference before training starts
    num_workers: int = 0


@dataclass
class PretrainConfig:
    """Captioning pretraining of the tiny backbone on the synthetic world (cached by its settings).

    The real backbone (Qwen2.5-VL-3B) arrives pretrained, so this is off in real configs.
    """

    enabled: bool = False
    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 20
    cache_dir: str = "data/cache/pretrained_backbone"
    seed: int = 0


@dataclass
class TrainConfig:
    lr: float = 2e-6
    weight_decay: float = 0.0
    batch_size: int = 8  # pairs per process per micro-batch
    grad_accum_steps: int = 1
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    loss: Literal["btt", "bt"] = "btt"
    ties_k: float = 5.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    eval_every: int = 0  # optimizer steps; 0 = only at the end
    save_every: int = 0  # optimizer steps; 0 = only at the end
    log_every: int = 10
    max_consecutive_skips: int = 5  # steps in a row skipped for a non-finite loss or gradient stop the run
    seed: int = 0


@dataclass
class RewardConfig:
    output_dir: str = "runs/reward"
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    resume: bool = True  # continue from output_dir/state if a previous run left one

    def validate(self) -> None:
        self.model.validate()
        t = self.train
        if t.batch_size < 1 or t.grad_accum_steps < 1:
            raise ConfigError("train.batch_size and train.grad_accum_steps must be >= 1")
        if t.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {t.lr}")
        if t.max_consecutive_skips < 1:
            raise ConfigError(f"train.max_consecutive_skips must be >= 1, got {t.max_consecutive_skips}")
        if t.loss == "btt" and t.ties_k <= 1:
            raise ConfigError(f"train.ties_k must be > 1 for the ties loss, got {t.ties_k}")
        if t.max_steps <= 0 and t.epochs <= 0:
            raise ConfigError("set train.max_steps > 0 or train.epochs > 0")
        manifests = [self.data.train_manifest, self.data.val_manifest, self.data.test_manifest]
        if any(manifests) and not self.data.train_manifest:
            raise ConfigError("data.train_manifest is required when any manifest is given")
        for name, path in zip(("train_manifest", "val_manifest", "test_manifest"), manifests):
            if path and not Path(path).is_file():
                raise ConfigError(f"data.{name}: file not found: {path}")
        if self.hub.push and not self.hub.repo_id:
            raise ConfigError("hub.push is set but hub.repo_id is empty")
        if self.pretrain.enabled and self.model.backbone != "tiny":
            raise ConfigError("pretrain.enabled is only for the tiny synthetic backbone (model.backbone: tiny)")
