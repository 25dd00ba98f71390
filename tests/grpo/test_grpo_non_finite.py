"""GRPO's non-finite guard on the tiny VACE generator (seconds): a blown-up run fails and exports
nothing, a reward that returns NaN for some samples loses those samples only, and a NaN loss never
reaches the optimizer."""
import dataclasses
import json

import pytest
import torch
from accelerate import Accelerator

from identity_grpo.core.config_io import RunFailed
from identity_grpo.core.finite import NonFiniteStep
from identity_grpo.generators.factory import build_generator
from identity_grpo.grpo.config import TrainSettings
from identity_grpo.grpo.recipe import train_grpo
from identity_grpo.grpo.update import Policy, micro_batches, optimizer_step
from identity_grpo.rewards.registry import register_reward
from test_grpo_smoke import data, make_config, sampled  # noqa: F401 (fixtures)


def flaky_brightness(videos, refs, prompts):
    """Brightness, but NaN for the first clip of every batch of several."""
    values = videos[..., 0].mean(dim=(1, 2, 3)).clone()
    if len(values) > 1:
        values[0] = float("nan")
    return values


register_reward("test_flaky_brightness")(lambda spec, device: flaky_brightness)


@pytest.fixture(scope="module")
def reward_model_folder(tmp_path_factory):
    """A small random stage-1 model: before the guard it scored an all-NaN clip as an ordinary one."""
    from reward_model.model import RewardModelConfig, build_reward_model

    torch.manual_seed(0)
    model = build_reward_model(RewardModelConfig(lora_r=4, lora_alpha=8, num_frames=2),
                               vocabulary=["two people talk", "a person waves", "two people walk"])
    folder = tmp_path_factory.mktemp("reward_model")
    model.eval().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("steps, stopped, reason", [
    (4, 3, "run stopped at step 3: 2 consecutive steps skipped for non-finite values (train.max_consecutive_skips), "
        "the last for its clip: all 4 samples dropped (4 for their clip)"),
    (2, 2, "run failed after step 2, in the final evaluation: the trained weights generate non-finite clips for 2 of 2 "
        "held-out prompts; nothing exported"),
])
def test_a_blown_up_run_fails_and_exports_nothing(data, reward_model_folder, tmp_path, steps, stopped, reason):
    """lr=1e10: the first update is finite but leaves a LoRA that generates NaN clips from then on."""
    cfg = make_config(data, tmp_path / "run", "vace", "train.lr=1e10", f"train.num_steps={steps}", "train.eval_every=0",
                      "train.max_consecutive_skips=2", f"rewards=[{{name: reward_model, path: {reward_model_folder}}}]")
    with pytest.raises(RunFailed) as failed:
        train_grpo(cfg, generator=build_generator(cfg.generator))
    assert str(failed.value) == reason
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == {"status": "failed", "reason": reason, "steps": stopped,
                       "skipped_steps": {"clip": stopped - 1}, "skipped_samples": {"clip": 4 * (stopped - 1)}}
    assert not (tmp_path / "run" / "final").exists()


def test_samples_with_a_nan_reward_are_dropped_and_the_rest_trains(data, tmp_path):
    rows = [{"prompt": "two people talk", "references": ["ref0.png", "ref1.png"]},
            {"prompt": "two people walk", "references": ["ref1.png", "ref2.png"]}]
    (data / "eval_pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))  # one evaluation batch of two
    cfg = make_config(data, tmp_path / "run", "vace", "rewards=[{name: test_flaky_brightness, weight: 2.0}]",
                      f"data.eval_manifest={data / 'eval_pairs.jsonl'}", "train.eval_every=0", "train.group_size=3",
                      "train.sample_batch_size=3", "train.train_batch_size=3")
    metrics = train_grpo(cfg, generator=build_generator(cfg.generator))

    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [e for e in log if "train/policy_loss" in e]
    assert [e["skip/samples/reward"] for e in train] == [2, 4]  # 2 of the 6 samples of each step
    for entry in train:  # the other 4 trained, and the logged rewards are theirs
        assert entry["train/skipped_updates"] == 0 and entry["train/grad_norm"] > 0
        assert entry["reward/mean"] == entry["reward/mean"] and entry["adv/advantage_abs_mean"] > 0
    assert metrics["status"] == "ok" and metrics["skipped_steps"] == {} and metrics["skipped_samples"] == {"reward": 4}
    # Evaluation: the first prompt's reward is NaN every time; it is counted and left out of the means.
    for phase in ("before", "after"):
        assert metrics[f"non_finite_{phase}"] == {"clip": 0, "reward": 1}
        per_prompt = metrics[f"per_prompt_{phase}"]
        assert "reward" not in per_prompt["0"] and metrics[f"reward_{phase}"] == per_prompt["1"]["reward"]
    assert metrics["win_rate"] in (0.0, 0.5, 1.0)  # over the one prompt with a reward both times
    assert (tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_a_nan_loss_never_reaches_the_optimizer(sampled):
    gen, params, rollout, schedule = sampled
    broken = dataclasses.replace(rollout, advantages=torch.tensor([float("nan"), -1.0, 0.5, -0.5]))
    assert [b.batch_size for b in micro_batches([broken], torch.arange(4), 4, skip_zero_advantage=False)] == [3]
    start = [p.detach().clone() for p in params]
    policy = Policy(gen, gen.transformer, params, torch.optim.SGD(params, lr=1.0), ema=None)
    with pytest.raises(NonFiniteStep) as skipped:
        optimizer_step(Accelerator(cpu=True), policy, [broken], schedule, TrainSettings(),
                       torch.Generator().manual_seed(0))
    assert skipped.value.quantity == "loss"
    assert all(torch.equal(p, s) for p, s in zip(params, start)) and all(p.grad is None for p in params)
