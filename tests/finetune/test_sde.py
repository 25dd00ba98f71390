"""sde.py against numbers worked out by hand, torch.distributions, the Euler step, and (CPS) the
published formula and the marginal it preserves."""
import math

import pytest
import torch

from identity_grpo.finetune.sde import (
    NoiseSchedule,
    cps_step,
    flow_grpo_noise_scale,
    gaussian_log_prob,
    kl_to_reference,
    linear_noise_scale,
    sde_step,
)


def t(*values):
    return torch.tensor([list(values)], dtype=torch.float32)  # [B=1, N]


def test_step_by_hand():
    # x = 1, v = 2, sigma 0.5 -> 0.25 (dt = -0.25), s = 0.5 (s^2 = 0.25):
    #   x coefficient 1 + 0.25 / (2 * 0.5) * (-0.25)             = 0.9375
    #   v coefficient (1 + 0.25 * (1 - 0.5) / (2 * 0.5)) * -0.25 = -0.28125
    #   mean = 0.9375 - 2 * 0.28125 = 0.375, std = 0.5 * sqrt(0.25) = 0.25
    # noise 2 -> x_next = 0.375 + 0.25 * 2 = 0.875
    # log N(0.875; 0.375, 0.25^2) = -0.5^2 / (2 * 0.0625) - ln 0.25 - ln sqrt(2 pi)
    step = sde_step(t(1.0), t(2.0), 0.5, 0.25, 0.5, noise=t(2.0))
    assert step.mean.item() == pytest.approx(0.375, abs=1e-7)
    assert step.std.item() == pytest.approx(0.25, abs=1e-7)
    assert step.x_next.item() == pytest.approx(0.875, abs=1e-7)
    expected = -2.0 + math.log(4.0) - 0.5 * math.log(2 * math.pi)
    assert step.log_prob.item() == pytest.approx(expected, abs=1e-6)


def test_log_prob_is_mean_over_elements():
    # Two elements with noise 2 and 0: per-element log-probs -2 - c and 0 - c where
    # c = ln 0.25 + ln sqrt(2 pi); their mean is -1 - c.
    step = sde_step(t(1.0, 1.0), t(2.0, 2.0), 0.5, 0.25, 0.5, noise=t(2.0, 0.0))
    c = math.log(0.25) + 0.5 * math.log(2 * math.pi)
    assert step.log_prob.item() == pytest.approx(-1.0 - c, abs=1e-6)


def test_zero_noise_is_euler_and_has_no_density():
    gen = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    step = sde_step(x, v, 0.8, 0.6, 0.0)
    dt = torch.tensor(0.6) - torch.tensor(0.8)  # in float32, as the step computes it
    torch.testing.assert_close(step.x_next, x + v * dt, rtol=0, atol=0)
    assert torch.isnan(step.log_prob).all()
    assert torch.equal(step.std, torch.zeros(2))


def test_log_prob_of_a_sample_matches_torch_normal():
    gen = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(3, 2, 3, 4, 5, generator=gen) for _ in range(3))
    step = sde_step(x, v, 0.7, 0.55, 0.9, noise=noise)
    std = 0.9 * math.sqrt(0.15)
    direct = torch.distributions.Normal(step.mean, std).log_prob(step.x_next).flatten(1).mean(1)
    torch.testing.assert_close(step.log_prob, direct, rtol=0, atol=1e-5)
    # Rescoring the stored sample gives the same log-prob.
    again = sde_step(x, v, 0.7, 0.55, 0.9, x_next=step.x_next)
    torch.testing.assert_close(again.log_prob, step.log_prob, rtol=0, atol=0)


def test_per_sample_sigmas_equal_separate_calls():
    gen = torch.Generator().manual_seed(1)
    x, v, noise = (torch.randn(2, 6, generator=gen) for _ in range(3))
    sigma, sigma_next, s = torch.tensor([0.9, 0.4]), torch.tensor([0.7, 0.0]), torch.tensor([0.3, 1.1])
    both = sde_step(x, v, sigma, sigma_next, s, noise=noise)
    for i in range(2):
        one = sde_step(x[i : i + 1], v[i : i + 1], sigma[i], sigma_next[i], s[i], noise=noise[i : i + 1])
        torch.testing.assert_close(both.x_next[i : i + 1], one.x_next, rtol=0, atol=0)
        torch.testing.assert_close(both.log_prob[i : i + 1], one.log_prob, rtol=0, atol=0)


def test_mixed_ode_and_sde_samples():
    x, v, noise = torch.ones(2, 2), torch.full((2, 2), 2.0), torch.full((2, 2), 2.0)
    step = sde_step(x, v, 0.5, 0.25, torch.tensor([0.0, 0.5]), noise=noise)
    assert torch.allclose(step.x_next[0], torch.tensor(0.5))  # Euler: 1 + 2 * -0.25
    assert torch.allclose(step.x_next[1], torch.tensor(0.875))
    assert torch.isnan(step.log_prob[0]) and torch.isfinite(step.log_prob[1])


def test_gradient_flows_through_mean_not_x_next():
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(1, 4, generator=gen).requires_grad_()
    x_next = torch.randn(1, 4, generator=gen).requires_grad_()
    step = sde_step(torch.randn(1, 4, generator=gen), v, 0.6, 0.5, 0.7, x_next=x_next)
    step.log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert x_next.grad is None


def test_low_precision_input_is_computed_in_float32():
    gen = torch.Generator().manual_seed(4)
    x, v, noise = (torch.randn(2, 8, generator=gen) for _ in range(3))
    x, v = x.bfloat16(), v.bfloat16()
    low = sde_step(x, v, 0.6, 0.5, 0.7, noise=noise)
    ref = sde_step(x.float(), v.float(), 0.6, 0.5, 0.7, noise=noise)
    assert low.x_next.dtype == low.log_prob.dtype == torch.float32
    torch.testing.assert_close(low.log_prob, ref.log_prob, rtol=0, atol=0)


def test_bad_calls_are_refused():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="sigma_next < sigma"):
        sde_step(x, x, 0.3, 0.5, 0.5, noise=x)
    with pytest.raises(ValueError, match="not both"):
        sde_step(x, x, 0.5, 0.3, 0.5, noise=x, x_next=x)
    with pytest.raises(ValueError, match="needs noise"):
        sde_step(x, x, 0.5, 0.3, 0.5)
    with pytest.raises(ValueError, match="one value per sample"):
        sde_step(x, x, torch.tensor([0.5, 0.4]), 0.3, 0.5, noise=x)


def test_noise_scales_by_hand():
    # sqrt(0.5 / 0.5) * 0.7 = 0.7 ; sqrt(0.8 / 0.2) * 0.7 = 1.4
    assert flow_grpo_noise_scale(0.5, 0.4, 0.7).item() == pytest.approx(0.7)
    assert flow_grpo_noise_scale(0.8, 0.6, 0.7).item() == pytest.approx(1.4)
    # At sigma = 1 the denominator uses the next sigma: sqrt(1 / (1 - 0.75)) * 0.5 = 1
    assert flow_grpo_noise_scale(1.0, 0.75, 0.5).item() == pytest.approx(1.0)
    assert linear_noise_scale(0.5, 0.1, 0.9).item() == pytest.approx(0.5)
    assert linear_noise_scale(1.0, 0.1, 0.9).item() == pytest.approx(0.9)


def test_noise_schedule_selects_the_formula():
    sigma, sigma_next = torch.tensor([1.0, 0.8]), torch.tensor([0.75, 0.6])
    torch.testing.assert_close(NoiseSchedule("flow_grpo", eta=0.5).scale(sigma, sigma_next), torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(NoiseSchedule("linear", s_min=0.1, s_max=0.9).scale(sigma, sigma_next), torch.tensor([0.9, 0.74]))
    assert torch.equal(NoiseSchedule("ode").scale(sigma, sigma_next), torch.zeros(2))
    with pytest.raises(ValueError, match="NoiseSchedule.kind"):
        NoiseSchedule("ddim").validate()


def test_kl_by_hand():
    # ||(1, 2) - (0, 0)||^2 averaged over 2 elements = 2.5 ; / (2 * 0.5^2) = 5
    assert kl_to_reference(t(1.0, 2.0), t(0.0, 0.0), torch.tensor([0.5])).item() == pytest.approx(5.0)
    # KL between the two Gaussians, computed by torch, averaged per element, gives the same.
    gen = torch.Generator().manual_seed(5)
    mean, ref, std = torch.randn(2, 10, generator=gen), torch.randn(2, 10, generator=gen), torch.tensor([0.3, 0.8])
    direct = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std[:, None]), torch.distributions.Normal(ref, std[:, None])
    ).mean(1)
    torch.testing.assert_close(kl_to_reference(mean, ref, std), direct)


def test_gaussian_log_prob_by_hand():
    # log N(0; 0, 1) = -ln sqrt(2 pi) = -0.9189385
    assert gaussian_log_prob(t(0.0), t(0.0), torch.tensor([1.0])).item() == pytest.approx(-0.9189385, abs=1e-6)


def test_cps_step_by_hand():
    # x = 1, v = 1, sigma 0.5 -> 0.25, level 2/3 (theta = pi/3: cos 1/2, sin sqrt(3)/2):
    #   x0 = 1 - 0.5 * 1 = 0.5, eps = 1 + 0.5 * 1 = 1.5
    #   mean = 0.75 * 0.5 + 0.25 * 0.5 * 1.5 = 0.5625, std = 0.25 * sqrt(3) / 2
    # noise (2, 0) -> x_next = (0.5625 + 2 std, 0.5625); per-element log-probs -2 - c and -c with
    # c = ln std + ln sqrt(2 pi), mean -1 - c.
    std = 0.25 * math.sqrt(3) / 2
    step = cps_step(t(1.0, 1.0), t(1.0, 1.0), 0.5, 0.25, 2 / 3, noise=t(2.0, 0.0))
    assert step.mean[0].tolist() == pytest.approx([0.5625, 0.5625], abs=1e-7)
    assert step.std.item() == pytest.approx(std, abs=1e-7)
    assert step.x_next[0].tolist() == pytest.approx([0.5625 + 2 * std, 0.5625], abs=1e-6)
    density = [math.exp(-((xn - 0.5625) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi)) for xn in step.x_next[0].tolist()]
    assert step.log_prob.item() == pytest.approx(sum(map(math.log, density)) / 2, abs=1e-5)
    assert step.log_prob.item() == pytest.approx(-1.0 - math.log(std) - 0.5 * math.log(2 * math.pi), abs=1e-5)
    again = cps_step(t(1.0, 1.0), t(1.0, 1.0), 0.5, 0.25, 2 / 3, x_next=step.x_next)
    torch.testing.assert_close(again.log_prob, step.log_prob, rtol=0, atol=0)


def test_cps_level_zero_is_the_euler_step():
    # Level 0 is the deterministic DDIM step (1 - sigma_next) x0 + sigma_next eps, which equals the
    # Euler step x + v dt; the implementation gives the Euler step bit for bit.
    gen = torch.Generator().manual_seed(6)
    x, v = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    step = cps_step(x, v, 0.8, 0.6, 0.0)
    dt = torch.tensor(0.6) - torch.tensor(0.8)
    torch.testing.assert_close(step.x_next, x + v * dt, rtol=0, atol=0)
    torch.testing.assert_close(step.x_next, 0.4 * (x - 0.8 * v) + 0.6 * (x + 0.2 * v), rtol=0, atol=1e-6)
    assert torch.isnan(step.log_prob).all() and torch.equal(step.std, torch.zeros(2))
    # The last step (sigma_next = 0) has no noise at any level: it lands on the predicted x0.
    last = cps_step(x, v, 0.2, 0.0, 0.8)
    torch.testing.assert_close(last.x_next, x - 0.2 * v, rtol=0, atol=1e-6)
    assert torch.isnan(last.log_prob).all()


def test_cps_matches_the_published_formula():
    # Flow-GRPO / Flow-CPS: std = sigma_next sin(level pi / 2),
    # mean = (1 - sigma_next) x0 + sqrt(sigma_next^2 - std^2) eps, x0 = x - sigma v, eps = x + (1 - sigma) v.
    gen = torch.Generator().manual_seed(7)
    x, v, noise = (torch.randn(3, 2, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    sigma, sigma_next, level = torch.tensor([1.0, 0.7, 0.3]), torch.tensor([0.9, 0.4, 0.1]), torch.tensor([0.8, 0.3, 1.0])
    step = cps_step(x, v, sigma, sigma_next, level, noise=noise)
    s, sn = sigma.double()[:, None, None], sigma_next.double()[:, None, None]
    std = sn * torch.sin(level.double()[:, None, None] * math.pi / 2)
    mean = (1 - sn) * (x - s * v) + torch.sqrt(sn**2 - std**2) * (x + (1 - s) * v)
    torch.testing.assert_close(step.std.double(), std.flatten(), rtol=1e-6, atol=0)
    torch.testing.assert_close(step.mean.double(), mean, rtol=0, atol=1e-6)
    direct = torch.distributions.Normal(mean, std).log_prob(step.x_next.double()).flatten(1).mean(1)
    torch.testing.assert_close(step.log_prob.double(), direct, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sigma, sigma_next", [(1.0, 0.95), (0.6, 0.5), (0.2, 0.05)])
@pytest.mark.parametrize("level", [0.0, 0.3, 0.8, 1.0])
def test_cps_preserves_the_marginal(sigma, sigma_next, level):
    # The step is linear in (x0, eps) when x = (1 - sigma) x0 + sigma eps and v = eps - x0 (the exact
    # velocity): read its coefficients off unit inputs. x_next = a x0 + b eps + std eps'' is
    # distributed as (1 - sigma_next) x0 + sigma_next eps' iff a = 1 - sigma_next and b^2 + std^2 = sigma_next^2.
    def mean_of(x0, eps):
        return cps_step((1 - sigma) * x0 + sigma * eps, eps - x0, sigma, sigma_next, level, noise=t(0.0)).mean.item()

    a, b = mean_of(t(1.0), t(0.0)), mean_of(t(0.0), t(1.0))
    std = cps_step(t(0.0), t(0.0), sigma, sigma_next, level, noise=t(0.0)).std.item()
    assert a == pytest.approx(1 - sigma_next, rel=1e-6, abs=1e-7)
    assert b**2 + std**2 == pytest.approx(sigma_next**2, rel=1e-6)
    # And by sampling: x0 fixed, eps and the step noise standard normal.
    gen = torch.Generator().manual_seed(8)
    x0 = torch.tensor([-2.0, 0.5, 3.0]).expand(100_000, 3)
    eps, noise = torch.randn(100_000, 3, generator=gen), torch.randn(100_000, 3, generator=gen)
    x_next = cps_step((1 - sigma) * x0 + sigma * eps, eps - x0, sigma, sigma_next, level, noise=noise).x_next
    torch.testing.assert_close(x_next.mean(0), (1 - sigma_next) * x0[0], rtol=0, atol=0.02)
    torch.testing.assert_close(x_next.std(0), torch.full((3,), sigma_next), rtol=0.01, atol=0)


def test_cps_per_sample_levels_and_kl():
    gen = torch.Generator().manual_seed(9)
    x, v, v_ref, noise = (torch.randn(2, 6, generator=gen) for _ in range(4))
    both = cps_step(x, v, 0.7, 0.5, torch.tensor([0.0, 0.8]), noise=noise)
    assert torch.isnan(both.log_prob[0]) and torch.isfinite(both.log_prob[1])
    one = cps_step(x[1:], v[1:], 0.7, 0.5, 0.8, noise=noise[1:])
    torch.testing.assert_close(both.log_prob[1:], one.log_prob, rtol=0, atol=0)
    # Policy and reference share the std (it depends on sigma_next and the level only): the KL
    # between the two Gaussians is the squared mean difference over 2 std^2.
    policy = cps_step(x[1:], v[1:], 0.7, 0.5, 0.8, x_next=one.x_next)
    ref = cps_step(x[1:], v_ref[1:], 0.7, 0.5, 0.8, x_next=one.x_next)
    assert torch.equal(policy.std, ref.std)
    direct = torch.distributions.kl_divergence(
        torch.distributions.Normal(policy.mean, policy.std[:, None]), torch.distributions.Normal(ref.mean, ref.std[:, None])
    ).mean(1)
    torch.testing.assert_close(kl_to_reference(policy.mean, ref.mean, policy.std), direct)
    with pytest.raises(ValueError, match=r"noise_level must be in \[0, 1\]"):
        cps_step(x, v, 0.7, 0.5, 1.5, noise=noise)


def test_cps_schedule_validates_its_level_and_steps_with_cps():
    sigma, sigma_next = torch.tensor([1.0, 0.8]), torch.tensor([0.75, 0.6])
    cps = NoiseSchedule("cps", noise_level=0.8)
    cps.validate()
    torch.testing.assert_close(cps.scale(sigma, sigma_next), torch.tensor([0.8, 0.8]))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"noise_level must be in \[0, 1\]"):
            NoiseSchedule("cps", noise_level=bad).validate()
    gen = torch.Generator().manual_seed(10)
    x, v, noise = (torch.randn(2, 4, generator=gen) for _ in range(3))
    via_schedule = cps.step(x, v, sigma, sigma_next, noise=noise)
    direct = cps_step(x, v, sigma, sigma_next, 0.8, noise=noise)
    torch.testing.assert_close(via_schedule.x_next, direct.x_next, rtol=0, atol=0)
    sde = NoiseSchedule("flow_grpo", eta=0.5).step(x, v, sigma, sigma_next, noise=noise)
    torch.testing.assert_close(sde.x_next, sde_step(x, v, sigma, sigma_next, torch.tensor([1.0, 1.0]), noise=noise).x_next)
