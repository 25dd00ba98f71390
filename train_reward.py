"""Stage 1: train the identity reward model.

    accelerate launch train_reward.py --config configs/reward/synthetic.yaml [key.sub=value ...]
"""
import sys

from reward_model.config import RewardConfig
from reward_model.config_io import ConfigError, parse_cli


def main(argv: list[str]) -> int:
    try:
        cfg = parse_cli(RewardConfig, argv)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    from reward_model.trainer import train_reward_model  # heavy imports only after the config is valid

    train_reward_model(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
