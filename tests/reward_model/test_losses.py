"""BT and BT-with-ties losses against values worked out by hand."""
import math

import pytest
import torch

from reward_model.losses import bradley_terry_loss, bt_ties_loss

LN5, LN3 = math.log(5.0), math.log(3.0)


def test_bt_ties_hand_worked_values():
    # Pair 1, a preferred, d - ln5 = ln3:      -log sigmoid(ln 3) = -log(3/4)                 = ln(4/3)
    # Pair 2, b preferred, d_pref = ln5:       -log sigmoid(0)                                 = ln 2
    # Pair 3, tie at d = 0:   -2 log sigmoid(-ln 5) - ln 24 = 2 ln 6 - ln 24                   = ln(3/2)
    # Pair 4, tie at d = ln3: -log sigmoid(ln 3/5) - log sigmoid(-ln 15) - ln 24
    #                        = -log(3/8) - log(1/16) - ln 24                                   = ln(16/9)
    r_a = torch.tensor([LN5 + LN3, 0.0, 0.7, LN3 + 0.2], requires_grad=True)
    r_b = torch.tensor([0.0, LN5, 0.7, 0.2])
    labels = torch.tensor([0, 1, 2, 2])
    loss, stats = bt_ties_loss(r_a, r_b, labels, k=5.0)
    expected = (math.log(4 / 3) + math.log(2) + math.log(3 / 2) + math.log(16 / 9)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["accuracy"] == 1.0
    assert stats["margin"] == pytest.approx((math.log(15) + LN5) / 2, abs=1e-6)
    assert stats["tie_within_margin"] == 1.0  # |0| and |ln 3| are both below ln 5
    assert stats["tie_abs_margin"] == pytest.approx(LN3 / 2, abs=1e-6)
    assert (stats["num_non_tied"], stats["num_tied"]) == (2.0, 2.0)
    loss.backward()
    # A tie at d = 0 sits at the minimum of its loss: no gradient for pair 3.
    assert r_a.grad[2].item() == pytest.approx(0.0, abs=1e-7)
    # Pair 1: d/dr_a of -log sigmoid(d - ln5) / 4 = -(1 - sigmoid(ln 3)) / 4 = -1/16.
    assert r_a.grad[0].item() == pytest.approx(-1 / 16, abs=1e-6)


def test_bt_ties_counts_wrong_order_and_is_symmetric_for_ties():
    loss, stats = bt_ties_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    assert stats["accuracy"] == 0.0 and stats["margin"] == pytest.approx(-1.5)
    assert "tie_within_margin" not in stats
    tie = torch.tensor([2])
    forward, _ = bt_ties_loss(torch.tensor([1.3]), torch.tensor([0.2]), tie)
    backward, _ = bt_ties_loss(torch.tensor([0.2]), torch.tensor([1.3]), tie)
    assert forward.item() == pytest.approx(backward.item(), abs=1e-7)
    _, stats = bt_ties_loss(torch.tensor([0.0, 2.0]), torch.zeros(2), torch.tensor([2, 2]), k=5.0)
    assert stats["tie_within_margin"] == 0.5  # |2| is above ln 5 = 1.61


def test_plain_bradley_terry_ignores_ties():
    # ln(4/3) for both decided pairs; the tie is left out of the mean.
    r_a = torch.tensor([LN3, 0.0, 5.0], requires_grad=True)
    r_b = torch.tensor([0.0, LN3, -5.0])
    loss, stats = bradley_terry_loss(r_a, r_b, torch.tensor([0, 1, 2]))
    assert loss.item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    assert stats["accuracy"] == 1.0 and stats["num_tied"] == 1.0
    loss.backward()
    assert r_a.grad[2].item() == 0.0


def test_plain_bradley_terry_all_ties_gives_zero_loss_with_gradient():
    r_a = torch.tensor([1.0, 2.0], requires_grad=True)
    loss, stats = bradley_terry_loss(r_a, torch.zeros(2), torch.tensor([2, 2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(r_a.grad, torch.zeros(2))
    assert "accuracy" not in stats and stats["num_non_tied"] == 0.0


@pytest.mark.parametrize(
    "r_a, r_b, labels, k",
    [
        (torch.zeros(2), torch.zeros(2), torch.tensor([0, 3]), 5.0),  # unknown label
        (torch.zeros(2), torch.zeros(3), torch.tensor([0, 1]), 5.0),  # shape mismatch
        (torch.zeros(2), torch.zeros(2), torch.tensor([0, 2]), 1.0),  # ties need k > 1
    ],
)
def test_bad_inputs_raise(r_a, r_b, labels, k):
    with pytest.raises(ValueError):
        bt_ties_loss(r_a, r_b, labels, k=k)
