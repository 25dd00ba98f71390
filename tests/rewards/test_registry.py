"""The reward registry: weighted sums by hand, per-reward values, errors, and the stage-1 scorer."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from identity_grpo.rewards.spec import RewardSpec
from identity_grpo.core.config_io import ConfigError
from identity_grpo.rewards.offload import OffloadedScorer
from identity_grpo.rewards.registry import WeightedRewards, register_reward, registered_rewards, validate_reward_specs

VIDEOS = torch.stack([torch.full((2, 4, 4, 3), v) for v in (0.0, 0.5, 1.0)])  # [3, T, H, W, 3]
REFS = [[np.zeros((4, 4, 3), np.uint8)], [], [np.zeros((4, 4, 3), np.uint8)] * 2]
PROMPTS = ["a", "bb", "ccc"]


@register_reward("test_brightness")
def build_brightness(spec, device):
    scale = spec.options.get("scale", 1.0)
    return lambda videos, refs, prompts: scale * videos.mean(dim=(1, 2, 3, 4))


@register_reward("test_people")
def build_people(spec, device):
    return lambda videos, refs, prompts: torch.tensor([float(len(r)) for r in refs])


def test_total_is_the_weighted_sum_and_each_reward_is_kept():
    rewards = WeightedRewards.from_config([
        RewardSpec("test_brightness", weight=2.0, options={"scale": 3.0}), RewardSpec("test_people", weight=0.5),
    ])
    total, values = rewards(VIDEOS, REFS, PROMPTS)
    # brightness 3 * (0, 0.5, 1) = (0, 1.5, 3); people (1, 0, 2); total 2 * b + 0.5 * p
    torch.testing.assert_close(values["test_brightness"], torch.tensor([0.0, 1.5, 3.0]))
    torch.testing.assert_close(values["test_people"], torch.tensor([1.0, 0.0, 2.0]))
    torch.testing.assert_close(total, torch.tensor([0.5, 3.0, 7.0]))
    assert total.dtype == torch.float32


def test_ready_functions_take_the_configured_weights():
    fns = {"x": lambda v, r, p: torch.tensor([1.0, 2.0, 3.0])}
    total, _ = WeightedRewards.from_config([RewardSpec("x", weight=4.0)], fns=fns)(VIDEOS, REFS, PROMPTS)
    torch.testing.assert_close(total, torch.tensor([4.0, 8.0, 12.0]))
    with pytest.raises(ValueError, match=r"must match the config's rewards \(\['y'\]\)"):
        WeightedRewards.from_config([RewardSpec("y")], fns=fns)


def test_unknown_names_and_bad_values_are_refused():
    assert {"reward_model", "test_brightness"} <= set(registered_rewards())
    assert "identity_consistency" not in registered_rewards()  # the independent measure is never a reward
    with pytest.raises(ValueError, match=r"rewards\[1\]\.name: unknown reward 'nope'"):
        WeightedRewards.from_config([RewardSpec("test_people"), RewardSpec("nope")])
    wrong_shape = WeightedRewards({"w": lambda v, r, p: torch.zeros(2)}, {"w": 1.0})
    with pytest.raises(ValueError, match=r"'w' returned \(2,\) values for 3 clips"):
        wrong_shape(VIDEOS, REFS, PROMPTS)


def test_non_finite_values_are_returned_for_the_caller_to_skip():
    nan = WeightedRewards({"n": lambda v, r, p: torch.tensor([0.0, float("nan"), 1.0]),
                           "i": lambda v, r, p: torch.tensor([float("inf"), 1.0, 1.0])}, {"n": 1.0, "i": 2.0})
    total, values = nan(VIDEOS, REFS, PROMPTS)
    assert torch.isfinite(total).tolist() == [False, False, True] and total[2] == 3.0
    assert torch.isnan(values["n"][1]) and torch.isinf(values["i"][0])


def saved_reward_model(folder):
    """A tiny reward model saved to folder, and three clips with one reference each to score."""
    from reward_model.model import RewardModelConfig, build_reward_model

    torch.manual_seed(0)
    model = build_reward_model(RewardModelConfig(lora_r=4, lora_alpha=8, num_frames=2), vocabulary=PROMPTS)
    with torch.no_grad():  # move every weight off its initial value so the head reads something
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    model.eval().save_pretrained(folder)
    videos = torch.rand(3, 3, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    refs = [[np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)] for i in range(3)]
    return model, videos, refs


def test_reward_model_entry_scores_like_the_stage1_scorer(tmp_path):
    from reward_model.scorer import RewardScorer

    model, videos, refs = saved_reward_model(tmp_path)
    rewards = WeightedRewards.from_config([RewardSpec("reward_model", 1.5, str(tmp_path), {"batch_size": 2})])
    total, values = rewards(videos, refs, PROMPTS)
    expected = RewardScorer(model, device="cpu").score(videos, refs, PROMPTS)
    torch.testing.assert_close(values["reward_model"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(total, 1.5 * expected, atol=1e-5, rtol=1e-5)
    assert expected.std() > 0  # the clips score differently: the comparison is not of constants


def test_an_offloaded_reward_model_scores_the_same(tmp_path):
    _, videos, refs = saved_reward_model(tmp_path)
    kept = WeightedRewards.from_config([RewardSpec("reward_model", 1.0, str(tmp_path), {"batch_size": 2})])
    offloaded = WeightedRewards.from_config([RewardSpec("reward_model", 1.0, str(tmp_path),
                                                        {"batch_size": 2, "offload": True})])
    assert isinstance(offloaded.fns["reward_model"], OffloadedScorer)
    expected = kept(videos, refs, PROMPTS)[1]["reward_model"]
    assert expected.std() > 0 and torch.equal(offloaded(videos, refs, PROMPTS)[1]["reward_model"], expected)


class FakeScorer:
    """Records where its model is sent and where it is while scoring (a CPU machine has no second device
    to put it on, so the moves are recorded, not made)."""

    def __init__(self, fail=False):
        self.moves, self.during, self.fail, self.device = [], [], fail, None
        self.model = SimpleNamespace(to=lambda device: self.moves.append(str(device)))

    def score(self, videos, references, prompts):
        self.during.append((self.moves[-1], str(self.device)))
        if self.fail:
            raise RuntimeError("scoring failed")
        return torch.ones(len(prompts))


def test_an_offloaded_reward_model_is_on_the_device_only_while_scoring():
    scorer = FakeScorer()
    fn = OffloadedScorer(scorer, "cuda:0")
    assert scorer.moves == ["cpu"]  # built: on the CPU
    for _ in range(2):
        fn(VIDEOS, REFS, PROMPTS)
    assert scorer.during == [("cuda:0", "cuda:0")] * 2  # model and inputs on the device while scoring
    assert scorer.moves == ["cpu", "cuda:0", "cpu", "cuda:0", "cpu"]  # and back after every call
    failing = FakeScorer(fail=True)
    with pytest.raises(RuntimeError):
        OffloadedScorer(failing, "cuda:0")(VIDEOS, REFS, PROMPTS)
    assert failing.moves[-1] == "cpu"  # also when scoring fails


def test_offload_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.options\.offload: true or false"):
        validate_reward_specs([RewardSpec("reward_model", 1.0, "x", {"offload": "yes"})])
