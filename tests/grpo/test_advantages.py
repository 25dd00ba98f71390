"""advantages.py against values worked out by hand, and across simulated processes."""
import math

import pytest
import torch

from identity_grpo.grpo.advantages import gather_for_advantages, group_advantages

# Three groups of two: (1, 3) mean 2 std 1; (2, 2) mean 2 std 0; (0, 4) mean 2 std 2.
REWARDS = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])
GROUPS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_group_scaling_by_hand():
    adv, stats = group_advantages(REWARDS, GROUPS, "group", clip=5.0)
    expected = torch.tensor([-1 / 1.0001, 1 / 1.0001, 0.0, 0.0, -2 / 2.0001, 2 / 2.0001])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    assert stats["zero_std_fraction"] == pytest.approx(1 / 3)
    assert stats["num_groups"] == 3
    assert stats["reward_mean"] == pytest.approx(2.0)


def test_std_is_the_population_std():
    # Flow-GRPO uses np.std (ddof = 0): rewards (0, 1) have std 0.5, not 0.707.
    adv, _ = group_advantages(torch.tensor([0.0, 1.0]), torch.tensor([7, 7]), "group", clip=5.0)
    torch.testing.assert_close(adv, torch.tensor([-0.5 / 0.5001, 0.5 / 0.5001]))


def test_batch_and_no_scaling_by_hand():
    # Deviations from the group means: (-1, 1, 0, 0, -2, 2). Batch std: sqrt((1+1+4+4) / 6).
    centred = torch.tensor([-1.0, 1.0, 0.0, 0.0, -2.0, 2.0])
    adv, _ = group_advantages(REWARDS, GROUPS, "batch", clip=5.0)
    torch.testing.assert_close(adv, centred / (math.sqrt(10 / 6) + 1e-4))
    adv, _ = group_advantages(REWARDS, GROUPS, "none", clip=5.0)
    torch.testing.assert_close(adv, centred)


def test_clipping():
    # none scaling: deviations -5 and 5 clipped to -1.5 and 1.5, the zero-deviation pair untouched.
    adv, stats = group_advantages(torch.tensor([0.0, 10.0, 3.0, 3.0]), torch.tensor([0, 0, 1, 1]), "none", clip=1.5)
    torch.testing.assert_close(adv, torch.tensor([-1.5, 1.5, 0.0, 0.0]))
    assert stats["advantage_clip_fraction"] == pytest.approx(0.5)


def test_interleaved_groups_and_arbitrary_ids():
    order = torch.tensor([4, 0, 2, 5, 1, 3])
    shuffled, _ = group_advantages(REWARDS[order], GROUPS[order], "group")
    plain, _ = group_advantages(REWARDS, GROUPS, "group")
    torch.testing.assert_close(shuffled, plain[order], rtol=0, atol=0)
    relabelled, _ = group_advantages(REWARDS, torch.tensor([103, 103, -5, -5, 42, 42]), "group")
    torch.testing.assert_close(relabelled, plain, rtol=0, atol=0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(REWARDS, GROUPS[:3])
    with pytest.raises(ValueError, match="scaling"):
        group_advantages(REWARDS, GROUPS, "rank")
    with pytest.raises(ValueError, match="no finite reward"):
        group_advantages(torch.tensor([float("inf"), float("nan")]), torch.tensor([0, 0]))


def test_non_finite_rewards_take_no_part():
    """A dropped sample (NaN or inf reward) gets a NaN advantage; its group's statistics come from
    the other members, exactly as if it had not been sampled."""
    rewards = torch.tensor([1.0, float("nan"), 3.0, 2.0, 2.0, 0.0, float("inf"), 4.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    kept = torch.isfinite(rewards)
    for scaling in ("group", "batch", "none"):
        adv, stats = group_advantages(rewards, groups, scaling)
        plain, plain_stats = group_advantages(REWARDS, GROUPS, scaling)
        assert torch.isnan(adv[~kept]).all()
        torch.testing.assert_close(adv[kept], plain, rtol=0, atol=1e-6)
        assert stats == pytest.approx(plain_stats)
    adv, stats = group_advantages(torch.tensor([1.0, float("nan"), 5.0, 7.0]), torch.tensor([0, 0, 1, 1]))
    assert adv[0] == 0 and stats["num_groups"] == 2  # a group with one finite member has no spread


class TwoProcessGather:
    """What accelerate's Accelerator.gather does across 2 processes: concatenate every process's
    tensor in rank order. One instance stands for one process of a simulated pair."""

    def __init__(self, shards: dict[str, list[torch.Tensor]], process_index: int):
        self.shards, self.process_index, self.num_processes = shards, process_index, 2

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        for shard in self.shards.values():
            if torch.equal(shard[self.process_index], tensor):
                return torch.cat(shard)
        raise AssertionError("gather called with a tensor this process does not hold")


def test_groups_split_across_processes_match_one_process():
    # Process 0 holds samples 0-2 and process 1 samples 3-5: group 1 is split between them.
    rewards0, rewards1 = REWARDS[:3] + torch.tensor([0.0, 0.0, 0.5]), REWARDS[3:]
    ids0, ids1 = GROUPS[:3], GROUPS[3:]
    shards = {"rewards": [rewards0, rewards1], "ids": [ids0, ids1]}
    single, single_stats = group_advantages(torch.cat([rewards0, rewards1]), GROUPS, "group")
    parts = [
        gather_for_advantages(TwoProcessGather(shards, rank), [rewards0, rewards1][rank], [ids0, ids1][rank], "group")
        for rank in (0, 1)
    ]
    torch.testing.assert_close(torch.cat([parts[0][0], parts[1][0]]), single, rtol=0, atol=0)
    assert parts[0][1] == parts[1][1] == single_stats
    # The split group (2.5, 2) got non-zero advantages: its two halves were normalized together.
    assert single[2] > 0 > single[3]
