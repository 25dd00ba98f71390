"""sde.py against numbers worked out by hand, torch.distributions, and the Euler step."""
import math

import pytest
import torch

from identity_grpo.finetune.sde import (
    NoiseSchedule,
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
