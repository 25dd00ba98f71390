"""Config sections every recipe has: where a finished model is published, and how the run is tracked."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
