"""loss.py against values and gradients worked out by hand."""
import math

import pytest
import torch

from identity_grpo.grpo.loss import clipped_policy_loss, grpo_step_loss


def hand_case():
    # ratios 1, 1.5, 0.5 ; advantages 2, 1, -1 ; clip range 0.2
    #   sample 1: -2 * 1 = -2 both ways                       -> -2
    #   sample 2: max(-1.5, -1 * 1.2 = -1.2)                    -> -1.2 (clipped, no gradient)
    #   sample 3: max(0.5, 1 * 0.8 = 0.8)                       -> 0.8  (clipped, no gradient)
    #   loss = (-2 - 1.2 + 0.8) / 3 = -0.8
    logp_new = torch.tensor([0.0, math.log(1.5), math.log(0.5)], requires_grad=True)
    return logp_new, torch.zeros(3), torch.tensor([2.0, 1.0, -1.0])


def test_clipped_loss_by_hand():
    logp_new, logp_old, adv = hand_case()
    loss, stats = clipped_policy_loss(logp_new, logp_old, adv, clip_range=0.2)
    assert loss.item() == pytest.approx(-0.8, abs=1e-6)
    # approx_kl = 0.5 * mean(0, ln 1.5^2, ln 0.5^2)
    assert stats["approx_kl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3, abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    assert stats["ratio_mean"].item() == pytest.approx(1.0, abs=1e-6)
    loss.backward()
    # d/dlogp of -A * ratio / 3 = -A * ratio / 3 for the unclipped sample, 0 for the clipped ones.
    torch.testing.assert_close(logp_new.grad, torch.tensor([-2 / 3, 0.0, 0.0]))


def test_pessimistic_bound_keeps_gradient_of_bad_moves():
    # ratio 1.5 with a negative advantage: max(1.5, 1.2) = 1.5 is the unclipped term, so the
    # gradient pushes the probability back down: d/dlogp (1 * ratio) / 1 = 1.5.
    logp_new = torch.tensor([math.log(1.5)], requires_grad=True)
    loss, stats = clipped_policy_loss(logp_new, torch.zeros(1), torch.tensor([-1.0]), clip_range=0.2)
    assert loss.item() == pytest.approx(1.5, abs=1e-6)
    loss.backward()
    assert logp_new.grad.item() == pytest.approx(1.5, abs=1e-6)
    assert stats["clip_fraction"].item() == 1.0


def test_on_policy_loss_is_minus_mean_advantage():
    logp = torch.tensor([-1.3, 0.2, 4.0])
    adv = torch.tensor([0.5, -2.0, 1.0])
    loss, stats = clipped_policy_loss(logp.clone().requires_grad_(), logp, adv, clip_range=1e-3)
    assert loss.item() == pytest.approx(-adv.mean().item(), abs=1e-6)
    assert stats["approx_kl"].item() == 0 and stats["clip_fraction"].item() == 0


def test_grpo_step_loss_adds_beta_times_kl():
    logp_new, logp_old, adv = hand_case()
    mean = torch.tensor([[1.0, 2.0]] * 3, requires_grad=True)
    mean_ref, std = torch.zeros(3, 2), torch.full((3,), 0.5)
    # KL per sample: mean(1, 4) / (2 * 0.25) = 5 ; beta 0.5 -> + 2.5
    loss, stats = grpo_step_loss(logp_new, logp_old, adv, 0.2, beta=0.5, mean=mean, mean_ref=mean_ref, std=std)
    assert loss.item() == pytest.approx(-0.8 + 2.5, abs=1e-5)
    assert stats["kl_loss"].item() == pytest.approx(5.0)
    assert stats["policy_loss"].item() == pytest.approx(-0.8, abs=1e-6)
    loss.backward()
    # KL_b = mean_i(m_i^2) / 0.5 = m_1^2 + m_2^2, so d(0.5 * mean_b KL_b)/dm_i = 0.5 * 2 m_i / 3 = m_i / 3
    torch.testing.assert_close(mean.grad, torch.tensor([[1 / 3, 2 / 3]] * 3))


def test_grpo_step_loss_without_kl():
    logp_new, logp_old, adv = hand_case()
    loss, stats = grpo_step_loss(logp_new, logp_old, adv, 0.2)
    assert loss.item() == pytest.approx(-0.8, abs=1e-6) and stats["kl_loss"].item() == 0
    with pytest.raises(ValueError, match="beta > 0 needs"):
        grpo_step_loss(logp_new, logp_old, adv, 0.2, beta=0.1)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="must all be"):
        clipped_policy_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3), 0.2)
