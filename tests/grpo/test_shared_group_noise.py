"""train.shared_group_noise: a group's samples start from one initial noise, drawn from the group id
alone; groups differ; the default keeps one noise per sample."""
import torch

from identity_grpo.core.seeds import Stream
from identity_grpo.finetune import sampling
from identity_grpo.finetune.sampling import keyed_initial_noise
from identity_grpo.grpo.recipe import train_grpo

from test_grpo_smoke import data, make_config, sampled  # noqa: F401 (fixtures)


def test_keyed_noise_depends_on_the_key_alone(sampled):
    gen, _, rollout, _ = sampled
    noise = keyed_initial_noise(gen, rollout.conds, 0, Stream.GROUP_NOISE, [5, 5, 7, 5])
    assert torch.equal(noise[0], noise[1]) and torch.equal(noise[0], noise[3])
    assert not torch.allclose(noise[0], noise[2])
    alone = keyed_initial_noise(gen, rollout.conds.select([2]), 0, Stream.GROUP_NOISE, [7])
    assert torch.equal(alone[0], noise[2])  # batching does not change a key's noise
    other_seed = keyed_initial_noise(gen, rollout.conds.select([2]), 1, Stream.GROUP_NOISE, [7])
    assert not torch.allclose(other_seed[0], noise[2])


def record_initial_noise(monkeypatch) -> list[torch.Tensor]:
    """Each training sampling batch's first latents [B, ...], as the recipe's sampling loop starts them."""
    starts, original = [], sampling.sample_with_log_probs

    def recording(gen, conds, sigmas, schedule, rng, initial_noise=None, **kw):
        trajectory = original(gen, conds, sigmas, schedule, rng, initial_noise, **kw)
        starts.append(trajectory.latents[:, 0].clone())
        return trajectory

    monkeypatch.setattr("identity_grpo.grpo.recipe.sample_with_log_probs", recording)
    return starts


def test_samples_of_a_group_share_their_initial_noise(data, tmp_path, monkeypatch):
    starts = record_initial_noise(monkeypatch)
    # 2 groups of 2 per step, sampled one at a time: a group's samples meet in different batches
    cfg = make_config(data, tmp_path / "shared", "vace", "train.num_steps=1", "train.eval_every=0",
                      "train.sample_batch_size=1", "train.train_batch_size=1", "train.shared_group_noise=true")
    train_grpo(cfg)
    first = [start[0] for start in starts[:4]]  # the step's 4 samples, in the sampler's shuffled order
    partners = [[j for j in range(4) if j != i and torch.equal(first[i], first[j])] for i in range(4)]
    assert all(len(p) == 1 for p in partners), partners  # two pairs: each sample shares with its group only


def test_by_default_every_sample_has_its_own_noise(data, tmp_path, monkeypatch):
    starts = record_initial_noise(monkeypatch)
    cfg = make_config(data, tmp_path / "own", "vace", "train.num_steps=1", "train.eval_every=0",
                      "train.sample_batch_size=1", "train.train_batch_size=1")
    train_grpo(cfg)
    first = [start[0] for start in starts[:4]]  # (groups may differ in shape: reference counts differ)
    assert not any(torch.equal(first[i], first[j]) for i in range(4) for j in range(i + 1, 4))
