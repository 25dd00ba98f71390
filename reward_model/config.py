"""Stage-1 experiment config: one YAML file in configs/reward/, validated before any model loads.

    cfg = load_config(RewardConfig, "configs/reward/synthetic.yaml", ["train.lr=1e-4"])  # runs validate()
    cfg.validate_inputs()  # the files it names exist here (the trainer calls it)

`validate` checks what the file alone decides (every count, rate and combination), so every YAML
in configs/ loads anywhere; `validate_inputs` checks the machine. Errors name the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from identity_grpo.core.config_io import ConfigError, require_at_least, require_local, require_positive
from identity_grpo.core.hub import is_hub_id
from identity_grpo.core.sections import RunSettings
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
    # More training pairs, added to the training split whichever way it is made (e.g. the generator's
    # stranger pairs of identity_grpo/grpo/generated_pairs.py beside the synthetic ones).
    extra_train_manifests: list[str] = field(default_factory=list)
    # VideoAlign CSVs with several preference columns (VQ, MQ, TA): the one to train on. Empty: the
    # 'label' column, else the only preference column (reward_model/pairs.py).
    label_column: str = ""
    check_files: bool = True  # stat every video and reference before training starts
    num_workers: int = 0


@dataclass
class PretrainConfig:
    """Pretraining of the tiny backbone on the synthetic world (reward_model/pretrain.py; cached by its settings):
    seeing people (the vision tower alone), then binding references to them (the whole backbone).

    The real backbone (Qwen2.5-VL-3B) arrives pretrained, so this is off in real configs.
    """

    enabled: bool = False
    vision_steps: int = 0  # phase 1: the vision tower alone names each person's attributes
    vision_lr: float = 2e-3
    steps: int = 300  # phase 2: binding, the whole backbone
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 20
    distractor_share: float = 0.35  # references replaced by a look-alike or the person in another shirt
    lookup_weight: float = 1.0  # > 0: one attention head learns to look up each person's reference
    lookup_layer: int = 0  # the language-model layer of that head
    caption_weight: float = 0.0  # > 0: also write a caption of the clip's people and the references
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
    # fsdp: weights, gradients and AdamW state sharded over the processes of a plain multi-process
    # launch (FSDP2, reward_model/recipe.py); none: each process holds all of them, or DeepSpeed
    # ZeRO-2 shards them when the launch says so (launch/accelerate/multi_gpu_zero2.yaml)
    sharding: Literal["none", "fsdp"] = "none"
    eval_every: int = 0  # optimizer steps; 0 = only at the end
    save_every: int = 0  # optimizer steps; 0 = only at the end
    keep_checkpoints: int = 2  # complete checkpoints kept (output_dir/checkpoints); a damaged newest falls back
    log_every: int = 10
    max_consecutive_skips: int = 5  # steps in a row skipped for a non-finite loss or gradient stop the run
    seed: int = 0


@dataclass
class RewardConfig(RunSettings):
    output_dir: str = "runs/reward"
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.validate_run()
        self.model.validate()
        _validate_data(self.data)
        _validate_train(self.train)
        p = self.pretrain
        if p.enabled:
            if self.model.backbone != "tiny":
                raise ConfigError("pretrain.enabled is only for the tiny synthetic backbone (model.backbone: tiny)")
            require_at_least("pretrain", p, 1, "steps", "batch_size")
            require_at_least("pretrain", p, 0, "warmup_steps", "vision_steps", "lookup_weight", "caption_weight",
                             "lookup_layer")
            require_positive("pretrain", p, "lr", "vision_lr")
            if not 0 <= p.distractor_share <= 1:
                raise ConfigError(f"pretrain.distractor_share must be in [0, 1], got {p.distractor_share}")
            if p.lookup_weight and p.lookup_layer >= self.model.tiny.layers:
                raise ConfigError(f"pretrain.lookup_layer must be below model.tiny.layers ({self.model.tiny.layers}), "
                                  f"got {p.lookup_layer}")
            if not p.cache_dir:
                raise ConfigError("pretrain.cache_dir: required (the pretrained backbone is cached there)")

    def validate_inputs(self) -> None:
        """The manifests and the backbone folder exist here (hub ids and "tiny" are not paths)."""
        d = self.data
        for name in ("train_manifest", "val_manifest", "test_manifest"):
            if getattr(d, name):
                require_local(getattr(d, name), f"data.{name}", "file")
        for i, path in enumerate(d.extra_train_manifests):
            require_local(path, f"data.extra_train_manifests[{i}]", "file")
        if self.model.backbone != "tiny" and not is_hub_id(self.model.backbone):
            require_local(self.model.backbone, "model.backbone", "folder")

    def batch_arithmetic(self, num_processes: int) -> str:
        """Pairs per optimizer step over the launch (printed at start)."""
        t, processes = self.train, f"{num_processes} process{'es' * (num_processes != 1)}"
        return (f"batch: train.batch_size={t.batch_size} x train.grad_accum_steps={t.grad_accum_steps} x {processes} = "
                f"{t.batch_size * t.grad_accum_steps * num_processes} pairs per optimizer step")


def _validate_data(d: DataConfig) -> None:
    manifests = [d.train_manifest, d.val_manifest, d.test_manifest]
    if any(manifests) and not d.train_manifest:
        raise ConfigError("data.train_manifest is required when any manifest is given")
    if d.label_column and not any(m.lower().endswith(".csv") for m in manifests):
        raise ConfigError(f"data.label_column ({d.label_column!r}) picks a column of a CSV manifest; "
                          "none of data.train_manifest / val_manifest / test_manifest is a .csv")
    require_at_least("data", d, 0, "num_workers")
    for i, path in enumerate(d.extra_train_manifests):
        if not isinstance(path, str) or not path:
            raise ConfigError(f"data.extra_train_manifests[{i}] must name a pair manifest, got {path!r}")
    if not d.train_manifest:  # the synthetic pairs are built; every split must hold pairs
        require_at_least("data.synthetic", d.synthetic, 1, "num_train", "num_val", "num_test", "num_frames",
                         "height", "width")


def _validate_train(t: TrainConfig) -> None:
    require_at_least("train", t, 1, "batch_size", "grad_accum_steps", "log_every", "keep_checkpoints",
                     "max_consecutive_skips")
    require_at_least("train", t, 0, "warmup_steps", "eval_every", "save_every", "weight_decay", "epochs")
    require_positive("train", t, "lr", "max_grad_norm")
    if t.max_steps <= 0 and t.epochs <= 0:
        raise ConfigError("set train.max_steps > 0 or train.epochs > 0")
    if t.loss == "btt" and t.ties_k <= 1:
        raise ConfigError(f"train.ties_k must be > 1 for the ties loss, got {t.ties_k}")
