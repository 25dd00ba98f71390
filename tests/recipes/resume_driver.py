"""A training process for the resume tests: `python resume_driver.py KIND DATA OUT [override ...]`
runs stage 1 (reward), GRPO (grpo) or IPRO (ipro) on tiny models, saving a checkpoint every step.
Rewards are simple functions of the pixels so the process needs nothing but the prompt manifest."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tests_support

from identity_grpo.core.config_io import load_config  # noqa: E402
from identity_grpo.rewards.registry import register_reward  # noqa: E402
from tests_support import TINY_REWARD_OVERRIDES  # noqa: E402

STAGE2 = ["generator.pretrained=tiny", "generator.dtype=float32", "sampling.train_steps=3", "sampling.eval_steps=2",
          "sampling.eval_batch_size=2", "lora.r=4", "lora.alpha=8", "train.lr=1e-2", "train.num_steps=4",
          "train.save_every=1", "train.eval_every=2", "wandb.mode=disabled"]
VIDEO = ["height=32", "width=32", "num_frames=5", "max_sequence_length=16", "guidance_scale=3.0"]


@register_reward("red")
def build_red(spec, device):
    return lambda videos, refs, prompts: videos[..., 0].mean(dim=(1, 2, 3))


def main(kind: str, data: Path, out: Path, overrides: list[str]) -> None:
    if kind == "reward":
        from reward_model.config import RewardConfig
        from reward_model.recipe import train_reward_model

        cfg = load_config(RewardConfig, None, [*TINY_REWARD_OVERRIDES, f"output_dir={out}",
                                               f"data.synthetic.out_dir={data}", "train.max_steps=6",
                                               "train.save_every=1", *overrides])
        train_reward_model(cfg)
        return
    manifests = [f"data.train_manifest={data / 'train.jsonl'}", f"data.eval_manifest={data / 'eval.jsonl'}"]
    if kind == "grpo":
        from identity_grpo.grpo.config import GrpoConfig
        from identity_grpo.grpo.recipe import train_grpo

        cfg = load_config(GrpoConfig, None, [*STAGE2, *manifests, f"output_dir={out}", "generator.kind=vace",
                                             *[f"generator.vace.{o}" for o in VIDEO], "rewards=[{name: red}]",
                                             "train.group_size=2", "train.prompts_per_step=2",
                                             "train.sample_batch_size=2", "train.train_batch_size=2", *overrides])
        train_grpo(cfg)
        return
    from identity_grpo.ipro.config import IproConfig
    from identity_grpo.ipro.recipe import train_ipro

    cfg = load_config(IproConfig, None, [*STAGE2, *manifests, f"output_dir={out}", "generator.kind=vace",
                                         *[f"generator.vace.{o}" for o in VIDEO], "eval_rewards=[{name: red}]",
                                         "train.batch_size=2", "train.micro_batch_size=2", "train.last_steps=2",
                                         *overrides])
    train_ipro(cfg, face_reward=lambda videos, records: videos[..., 1].mean(dim=(1, 2, 3)))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
