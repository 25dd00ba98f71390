"""Stage 1: train the identity reward model.

    accelerate launch train_reward.py --config configs/reward/synthetic.yaml [key.sub=value ...]
"""
import sys

from reward_model.config import RewardConfig
from identity_grpo.core.config_io import run_entry


def load_trainer():
    from reward_model.recipe import train_reward_model

    return train_reward_model


def main(argv: list[str]) -> int:
    return run_entry(RewardConfig, argv, load_trainer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
