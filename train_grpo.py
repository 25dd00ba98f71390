"""Stage 2: GRPO on a LoRA of a VACE / Phantom video generator, rewarded by the identity reward model.

    accelerate launch train_grpo.py --config configs/grpo/vace_1.3b.yaml [key.sub=value ...]
"""
import sys

from identity_grpo.config import GrpoConfig
from reward_model.config_io import ConfigError, parse_cli


def main(argv: list[str]) -> int:
    try:
        cfg = parse_cli(GrpoConfig, argv)
        cfg.validate_inputs()
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    from identity_grpo.trainer import train_grpo  # heavy imports only after the config is valid

    try:
        train_grpo(cfg)
    except ConfigError as error:  # e.g. the batch does not split over the launched processes
        print(f"config error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
