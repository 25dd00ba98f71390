"""The written-out sampler on a tiny VACE model: the on-policy check (SDE and CPS, also in an SDE
window), ODE = Euler, seeding, and the Rollout record built from a trajectory."""
import numpy as np
import pytest
import torch

from identity_grpo.generators.tiny import tiny_vace_generator
from identity_grpo.generators.vace import VaceOptions
from identity_grpo.finetune.rollout import Rollout
from identity_grpo.finetune.sampling import recompute_log_prob, sample_with_log_probs
from identity_grpo.finetune.sde import NoiseSchedule
from identity_grpo.grpo.sde_window import WindowedNoiseSchedule

SDE = NoiseSchedule("flow_grpo", eta=0.7)
CPS = NoiseSchedule("cps", noise_level=0.8)
STEPS = 4


@pytest.fixture(scope="module")
def gen():
    return tiny_vace_generator(VaceOptions(height=32, width=32, num_frames=5, guidance_scale=4.5, max_sequence_length=16))


def make_conds(gen, batch):
    rs = np.random.RandomState(batch)
    prompts = [f"person {i} waves" for i in range(batch)]
    refs = [[rs.randint(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(2)] for _ in range(batch)]
    return gen.encode_conditions(prompts, refs), refs


def max_ratio_error(gen, conds, traj, micro_batch, schedule=SDE, steps=range(STEPS)):
    worst = 0.0
    for start in range(0, conds.batch_size, micro_batch):
        rows = list(range(start, min(start + micro_batch, conds.batch_size)))
        for i in steps:
            step = recompute_log_prob(
                gen, conds.select(rows), traj.latents[rows, i], traj.latents[rows, i + 1],
                traj.sigmas[i], traj.sigmas[i + 1], schedule,
            )
            ratio = torch.exp(step.log_prob - traj.log_probs[rows, i])
            worst = max(worst, (ratio - 1).abs().max().item())
    return worst


@pytest.mark.parametrize("batch, micro_batch", [(1, 1), (4, 4), (4, 1)])
def test_recomputed_log_probs_equal_sampled_ones(gen, batch, micro_batch):
    conds, _ = make_conds(gen, batch)
    traj = sample_with_log_probs(gen, conds, gen.sigmas(STEPS), SDE, torch.Generator().manual_seed(3))
    assert torch.isfinite(traj.log_probs).all()
    assert max_ratio_error(gen, conds, traj, micro_batch) < 1e-5


@pytest.mark.parametrize("batch, micro_batch", [(4, 4), (4, 1)])
def test_cps_recomputed_log_probs_equal_sampled_ones(gen, batch, micro_batch):
    conds, _ = make_conds(gen, batch)
    traj = sample_with_log_probs(gen, conds, gen.sigmas(STEPS), CPS, torch.Generator().manual_seed(3))
    # The last step (sigma_next = 0) is deterministic under CPS: no density, never trained.
    assert torch.isfinite(traj.log_probs[:, :-1]).all() and torch.isnan(traj.log_probs[:, -1]).all()
    assert max_ratio_error(gen, conds, traj, micro_batch, CPS, range(STEPS - 1)) < 1e-5
    i, sigma, sigma_next = 1, traj.sigmas[1], traj.sigmas[2]
    with torch.no_grad():
        step = recompute_log_prob(gen, conds, traj.latents[:, i], traj.latents[:, i + 1], sigma, sigma_next, CPS)
    std = sigma_next * torch.sin(torch.tensor(0.8 * torch.pi / 2))
    direct = torch.distributions.Normal(step.mean, std).log_prob(traj.latents[:, i + 1]).flatten(1).mean(1)
    torch.testing.assert_close(traj.log_probs[:, i], direct, rtol=0, atol=1e-5)


@pytest.mark.parametrize("schedule", [SDE, CPS], ids=["flow_grpo", "cps"])
def test_window_noises_only_its_steps_and_stays_on_policy(gen, schedule):
    conds, _ = make_conds(gen, 2)
    sigmas = gen.sigmas(STEPS)
    window = WindowedNoiseSchedule(schedule, sigmas, start=1, size=2)
    noise = gen.initial_noise(conds, torch.Generator().manual_seed(7))
    traj = sample_with_log_probs(gen, conds, sigmas, window, torch.Generator().manual_seed(8), initial_noise=noise)
    assert torch.isfinite(traj.log_probs).all(dim=0).tolist() == [False, True, True, False]
    assert max_ratio_error(gen, conds, traj, 2, window, [1, 2]) < 1e-5
    with torch.no_grad():  # step 0, outside the window, is the Euler step
        euler = noise + gen.predict_velocity(noise, sigmas[0].expand(2), conds) * (sigmas[1] - sigmas[0])
    torch.testing.assert_close(traj.latents[:, 1], euler, rtol=0, atol=1e-6)


def test_recompute_has_gradient_for_the_transformer(gen):
    conds, _ = make_conds(gen, 2)
    traj = sample_with_log_probs(gen, conds, gen.sigmas(STEPS), SDE, torch.Generator().manual_seed(0))
    gen.transformer.zero_grad()
    step = recompute_log_prob(gen, conds, traj.latents[:, 1], traj.latents[:, 2], traj.sigmas[1], traj.sigmas[2], SDE)
    step.log_prob.sum().backward()
    grads = [p.grad for p in gen.transformer.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    gen.transformer.zero_grad()


def test_ode_sampling_is_the_euler_loop(gen):
    conds, _ = make_conds(gen, 2)
    sigmas = gen.sigmas(STEPS)
    noise = gen.initial_noise(conds, torch.Generator().manual_seed(5))
    traj = sample_with_log_probs(gen, conds, sigmas, NoiseSchedule("ode"), None, initial_noise=noise)
    x = noise
    with torch.no_grad():
        for i in range(STEPS):
            x = x + gen.predict_velocity(x, sigmas[i].expand(2), conds) * (sigmas[i + 1] - sigmas[i])
            torch.testing.assert_close(traj.latents[:, i + 1], x, rtol=0, atol=1e-6)
    assert torch.isnan(traj.log_probs).all()


def test_seed_reproduces_a_rollout_and_another_seed_does_not(gen):
    conds, _ = make_conds(gen, 2)
    run = lambda seed: sample_with_log_probs(gen, conds, gen.sigmas(STEPS), SDE, torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    assert (a.latents[:, -1] - c.latents[:, -1]).abs().max() > 0.1
    assert a.latents.shape == (2, STEPS + 1, *gen.initial_noise(conds, None).shape[1:])


def test_sampled_log_prob_is_the_gaussian_density_of_the_stored_step(gen):
    conds, _ = make_conds(gen, 2)
    traj = sample_with_log_probs(gen, conds, gen.sigmas(STEPS), SDE, torch.Generator().manual_seed(4))
    with torch.no_grad():
        step = recompute_log_prob(gen, conds, traj.latents[:, 2], traj.latents[:, 3], traj.sigmas[2], traj.sigmas[3], SDE)
    std = SDE.scale(traj.sigmas[2], traj.sigmas[3]) * torch.sqrt(traj.sigmas[2] - traj.sigmas[3])
    direct = torch.distributions.Normal(step.mean, std).log_prob(traj.latents[:, 3]).flatten(1).mean(1)
    torch.testing.assert_close(traj.log_probs[:, 2], direct, rtol=0, atol=1e-5)


def test_rollout_slicing_keeps_samples_aligned(gen):
    conds, refs = make_conds(gen, 4)
    traj = sample_with_log_probs(gen, conds, gen.sigmas(STEPS), SDE, torch.Generator().manual_seed(6))
    rollout = Rollout.from_trajectory(traj, conds, torch.tensor([0, 0, 1, 1]), refs)
    rollout.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    assert rollout.batch_size == 4 and rollout.num_steps == STEPS and rollout.prompts == conds.prompts

    picked = rollout.select([2, 0])
    assert picked.prompts == [conds.prompts[2], conds.prompts[0]]
    assert picked.references[0] is refs[2]
    assert torch.equal(picked.latents[1], rollout.latents[0])
    assert torch.equal(picked.conds.tensors["prompt_embeds"][0], conds.tensors["prompt_embeds"][2])

    chunks = [rollout.select(part) for part in torch.randperm(4, generator=torch.Generator().manual_seed(0)).split(3)]
    assert [c.batch_size for c in chunks] == [3, 1]
    merged = Rollout.concatenate(chunks)
    order = [merged.prompts.index(p) for p in rollout.prompts]
    assert torch.equal(merged.latents[order], rollout.latents)
    assert torch.equal(merged.advantages[order], rollout.advantages)

    # Per-sample steps: sample b's transition is latents[b, k] -> latents[b, k + 1].
    steps = torch.tensor([0, 3, 1, 2])
    tr = rollout.transition(steps)
    for b, k in enumerate(steps.tolist()):
        assert torch.equal(tr.latents[b], rollout.latents[b, k])
        assert torch.equal(tr.next_latents[b], rollout.latents[b, k + 1])
        assert tr.log_probs[b] == rollout.log_probs[b, k]
        assert tr.sigmas[b] == rollout.sigmas[k] and tr.sigmas_next[b] == rollout.sigmas[k + 1]
    assert rollout.to("cpu").latents.device.type == "cpu"


def test_train_steps_use_only_stochastic_steps(gen):
    conds, refs = make_conds(gen, 2)
    traj = sample_with_log_probs(gen, conds, gen.sigmas(STEPS), SDE, torch.Generator().manual_seed(6))
    traj.log_probs[:, 0] = float("nan")  # as if step 0 had been an ODE step
    rollout = Rollout.from_trajectory(traj, conds, torch.tensor([0, 0]), refs)
    assert rollout.stochastic_steps().tolist() == [1, 2, 3]
    assert rollout.train_steps(0.7).tolist() == [[1, 2], [1, 2]]  # int(0.7 * 3) = 2, first ones
    drawn = rollout.train_steps(1.0, torch.Generator().manual_seed(0))
    assert drawn.shape == (2, 3) and all(sorted(row) == [1, 2, 3] for row in drawn.tolist())


def test_rollout_refuses_mismatched_fields(gen):
    conds, refs = make_conds(gen, 2)
    traj = sample_with_log_probs(gen, conds, gen.sigmas(2), SDE, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="group_ids"):
        Rollout.from_trajectory(traj, conds, torch.tensor([0, 0, 1]), refs)
