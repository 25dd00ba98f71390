"""Reward-gradient mode (IPRO): a LoRA of a Wan I2V / VACE / Phantom generator trained by backpropagating a
differentiable face-identity reward through the decoder and the last denoising steps.

    accelerate launch train_ipro.py --config configs/ipro/wan2.1_i2v_14b.yaml [key.sub=value ...]
"""
import sys

from identity_grpo.ipro.config import IproConfig
from reward_model.config_io import ConfigError, parse_cli


def main(argv: list[str]) -> int:
    try:
        cfg = parse_cli(IproConfig, argv)
        cfg.validate_inputs()
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    from identity_grpo.ipro.trainer import train_ipro  # heavy imports only after the config is valid

    try:
        train_ipro(cfg)
    except ConfigError as error:  # e.g. the batch does not split over the launched processes
        print(f"config error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
