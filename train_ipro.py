"""Reward-gradient mode (IPRO): a LoRA of a Wan I2V / VACE / Phantom generator trained by backpropagating a
differentiable face-identity reward through the decoder and the last denoising steps.

    accelerate launch train_ipro.py --config configs/ipro/wan2.1_i2v_14b.yaml [key.sub=value ...]
"""
import sys

from identity_grpo.ipro.config import IproConfig
from identity_grpo.core.config_io import run_entry


def load_trainer():
    from identity_grpo.ipro.recipe import train_ipro

    return train_ipro


def main(argv: list[str]) -> int:
    return run_entry(IproConfig, argv, load_trainer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
