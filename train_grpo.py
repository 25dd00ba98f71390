"""Stage 2: GRPO on a LoRA of a VACE / Phantom video generator, rewarded by the identity reward model.

    accelerate launch train_grpo.py --config configs/grpo/vace_1.3b.yaml [key.sub=value ...]
"""
import sys

from identity_grpo.grpo.config import GrpoConfig
from identity_grpo.core.config_io import run_entry


def load_trainer():
    from identity_grpo.grpo.recipe import train_grpo

    return train_grpo


def main(argv: list[str]) -> int:
    return run_entry(GrpoConfig, argv, load_trainer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
