"""Worked numbers for the reference ops, computed by hand (see each test's comments)."""

import math

import pytest
import torch

from minerva import reference

F = torch.float64


def col(*xs):
    """A [T, 1] column."""
    return torch.tensor(xs, dtype=F).unsqueeze(1)


def test_gae_no_episode_end():
    # gamma = 0.9, lam = 0.5, so gamma * lam = 0.45
    # delta = r + 0.9 V' - V = [1 + 0.9 - 0.5, 2 + 1.35 - 1, 3 + 1.8 - 1.5] = [1.4, 2.35, 3.3]
    # A_2 = 3.3; A_1 = 2.35 + 0.45 * 3.3 = 3.835; A_0 = 1.4 + 0.45 * 3.835 = 3.12575
    rewards, values, next_values = col(1, 2, 3), col(0.5, 1.0, 1.5), col(1.0, 1.5, 2.0)
    never = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = reference.gae(rewards, values, next_values, never, never, 0.9, 0.5)
    torch.testing.assert_close(adv, col(3.12575, 3.835, 3.3))
    torch.testing.assert_close(ret, col(3.62575, 4.835, 4.8))


def test_gae_truncated_bootstraps_terminated_does_not():
    # Both envs end their episode at t = 1; V(final observation) = next_values[1] = 4.
    # env 0 truncated:  delta_1 = 2 + 0.9 * 4 - 1 = 4.6;  A_1 = 4.6 (done cuts A_2)
    #                   A_0 = 1.4 + 0.45 * 4.6 = 3.47
    # env 1 terminated: delta_1 = 2 + 0 - 1 = 1.0;        A_1 = 1.0
    #                   A_0 = 1.4 + 0.45 * 1.0 = 1.85
    # A_2 = 3 + 0.9 * 2 - 1.5 = 3.3 for both.
    rewards = col(1, 2, 3).repeat(1, 2)
    values = col(0.5, 1.0, 1.5).repeat(1, 2)
    next_values = col(1.0, 4.0, 2.0).repeat(1, 2)
    terminated = torch.tensor([[False, False], [False, True], [False, False]])
    truncated = torch.tensor([[False, False], [True, False], [False, False]])
    adv, ret = reference.gae(rewards, values, next_values, terminated, terminated | truncated,
                             0.9, 0.5)
    expected = torch.tensor([[3.47, 1.85], [4.6, 1.0], [3.3, 3.3]], dtype=F)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)


def test_returns_estimator_is_lambda_one():
    # gamma = 0.5, r = 1 each step, bootstrap V' = 2 at the end:
    # R_0 = 1 + 0.5 + 0.25 + 0.125 * 2 = 2, and likewise R_1 = R_2 = 2.
    never = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = reference.gae(col(1, 1, 1), col(0, 0, 0), col(0, 0, 2), never, never, 0.5, 1.0)
    torch.testing.assert_close(ret, col(2, 2, 2))
    torch.testing.assert_close(adv, col(2, 2, 2))


def test_dae_estimator_is_lambda_zero():
    # lam = 0: A_t = delta_t = r_t + gamma V'_t - V_t = [1 + 0.9 - 0.5, 2 + 1.35 - 1, 3 + 1.8 - 1.5]
    never = torch.zeros(3, 1, dtype=torch.bool)
    adv, _ = reference.gae(col(1, 2, 3), col(0.5, 1.0, 1.5), col(1.0, 1.5, 2.0), never, never,
                           0.9, 0.0)
    torch.testing.assert_close(adv, col(1.4, 2.35, 3.3))


def test_topk_mask_picks_the_top_fraction_of_valid_entries():
    # valid advantages (index 5 = 9 is invalid): [3, 1, 4, 1, 5, 2, 6] -> n = 7,
    # k = floor(0.5 * 7) = 3 -> the 3rd largest is 4 -> indices 2 (4), 4 (5), 7 (6).
    advantages = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6], dtype=F)
    valid = torch.tensor([True] * 5 + [False] + [True] * 2)
    selected = reference.topk_mask(advantages, valid, 0.5)
    assert selected.tolist() == [False, False, True, False, True, False, False, True]


def test_topk_mask_selects_every_tie_with_the_kth():
    # k = max(1, floor(0.25 * 4)) = 1, the largest is 2, and all three 2s are selected.
    selected = reference.topk_mask(torch.tensor([2.0, 2.0, 1.0, 2.0]), torch.ones(4, dtype=bool),
                                   0.25)
    assert selected.tolist() == [True, True, False, True]


def test_topk_mask_keeps_at_least_one_and_handles_empty():
    advantages = torch.tensor([0.5, -1.0, 2.0, 0.0])
    # floor(0.1 * 4) = 0, raised to k = 1: only the maximum.
    assert reference.topk_mask(advantages, torch.ones(4, dtype=bool), 0.1).tolist() == [
        False, False, True, False]
    assert not reference.topk_mask(advantages, torch.zeros(4, dtype=bool), 0.5).any()
    assert reference.topk_mask(advantages, torch.ones(4, dtype=bool), 1.0).all()


def test_vmpo_weights_worked_example():
    # eta = 0.5, a = [0, ln(3) / 2] selected: a / eta = [0, ln 3] -> exp = [1, 3]
    # weights = [1/4, 3/4, 0]; log_mean_exp = log((1 + 3) / 2) = log 2.
    # d log_mean_exp / d eta = -E_w[a] / eta^2 = -(0.75 * ln(3) / 2) / 0.25 = -1.5 ln 3
    advantages = torch.tensor([0.0, math.log(3) / 2, 5.0], dtype=F)
    selected = torch.tensor([True, True, False])
    eta = torch.tensor(0.5, dtype=F, requires_grad=True)
    weights, log_mean_exp = reference.vmpo_weights(advantages, selected, eta)
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.75, 0.0], dtype=F))
    torch.testing.assert_close(log_mean_exp, torch.tensor(math.log(2), dtype=F))
    (grad,) = torch.autograd.grad(log_mean_exp, eta)
    torch.testing.assert_close(grad, torch.tensor(-1.5 * math.log(3), dtype=F))


def test_vmpo_weights_are_stable_for_huge_advantages():
    advantages = torch.tensor([1000.0, 1000.0 + math.log(3)], dtype=F)
    weights, log_mean_exp = reference.vmpo_weights(advantages, torch.ones(2, dtype=bool),
                                                   torch.tensor(1.0, dtype=F))
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.75], dtype=F))
    torch.testing.assert_close(log_mean_exp, torch.tensor(1000 + math.log(2), dtype=F))


def test_vmpo_weights_empty_selection():
    weights, log_mean_exp = reference.vmpo_weights(torch.randn(4), torch.zeros(4, dtype=bool),
                                                   torch.tensor(1.0))
    assert weights.eq(0).all() and log_mean_exp.item() == 0.0


@pytest.mark.parametrize("eta", [0.0, -1.0, float("nan"), float("inf")])
def test_reference_rejects_bad_eta(eta):
    with pytest.raises(ValueError, match="eta must be positive"):
        reference.vmpo_weights(torch.randn(3), torch.ones(3, dtype=bool), torch.tensor(eta))
