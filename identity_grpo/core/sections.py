"""Config sections every recipe has: the run folder, where a finished model is published, and how
the run is tracked."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from identity_grpo.core.config_io import ConfigError


@dataclass
class HubConfig:
    push: bool = False
    repo_id: str = ""
    private: bool = True


@dataclass
class WandbConfig:
    project: str = "identity-grpo"
    mode: Literal["offline", "online", "disabled"] = "offline"
    run_name: str = ""


@dataclass
class RunSettings:
    """The fields every experiment config starts with (stage 1, GRPO and IPRO subclass it)."""

    output_dir: str = "runs/run"  # checkpoints, logs, samples, metrics.json and final/
    hub: HubConfig = field(default_factory=HubConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    resume: bool = True  # continue from output_dir/checkpoints if a previous run left one

    def validate_run(self) -> None:
        if not self.output_dir:
            raise ConfigError("output_dir: required (where checkpoints, samples and metrics.json go)")
        if self.hub.push and not self.hub.repo_id:
            raise ConfigError("hub.push is set but hub.repo_id is empty")
