"""Worked numbers for the V-MPO losses and the normalisers (computed by hand)."""

import math

import numpy as np
import pytest
import torch

from minerva import losses
from minerva.normalization import RewardScaler, RunningMeanStd
from minerva.trainers.vmpo import losses as vmpo_losses

F = torch.float64


def t(*xs):
    return torch.tensor(xs, dtype=F)


def test_normalize_advantages_uses_valid_samples_only():
    # valid [1, 2, 3]: mean 2, std sqrt(2/3) = 0.81650 -> [-1.22474, 0, 1.22474]; invalid -> 0
    got = losses.normalize_advantages(t(1, 2, 3, 100), torch.tensor([True, True, True, False]))
    torch.testing.assert_close(got, t(-1.2247449, 0.0, 1.2247449, 0.0), rtol=1e-6, atol=1e-6)


def test_e_step_weights_and_temperature_loss():
    # eta = 0.5, A = [0, ln(3) / 2]: A / eta = [0, ln 3] -> weights [1/4, 3/4]
    # L_eta = eta * eps + eta * log mean exp = 0.5 * 0.1 + 0.5 * ln 2 = 0.396574
    # dL/deta = eps + ln 2 + eta * d(lme)/deta = 0.1 + ln 2 - 0.5 * 1.5 ln 3 = -0.030812
    eta = torch.tensor(0.5, dtype=F, requires_grad=True)
    out = vmpo_losses.e_step(t(0.0, math.log(3) / 2), torch.tensor([True, True]), eta, 0.1)
    torch.testing.assert_close(out.weights, t(0.25, 0.75))
    assert not out.weights.requires_grad
    expected_loss = torch.tensor(0.05 + 0.5 * math.log(2), dtype=F)
    torch.testing.assert_close(out.temperature_loss, expected_loss)
    (grad,) = torch.autograd.grad(out.temperature_loss, eta)
    assert abs(grad.item() - (0.1 + math.log(2) - 0.75 * math.log(3))) < 1e-10


def test_weighted_nll():
    # -(0.25 * -1 + 0.75 * -2) = 1.75
    assert vmpo_losses.weighted_nll(t(-1.0, -2.0), t(0.25, 0.75)).item() == 1.75


def test_gaussian_kl_mean():
    # 0.5 * ((1 - 0) / 1)^2 + 0.5 * ((2 - 0) / 2)^2 = 1.0
    assert vmpo_losses.gaussian_kl_mean(t(0, 0), t(1, 2), t(1, 2)).item() == 1.0


def test_gaussian_kl_std_matches_closed_form():
    # KL(N(0, 1) || N(0, 2)) = ln 2 + 1 / 8 - 1 / 2 = 0.318147
    got = vmpo_losses.gaussian_kl_std(t(1.0), t(2.0)).item()
    assert abs(got - (math.log(2) + 0.125 - 0.5)) < 1e-12
    assert vmpo_losses.gaussian_kl_std(t(0.7, 3.0), t(0.7, 3.0)).item() == 0.0


def test_categorical_kl():
    # p_old = [0.5, 0.5], p = [0.75, 0.25]: 0.5 ln(0.5 / 0.75) + 0.5 ln(0.5 / 0.25) = 0.143841
    got = vmpo_losses.categorical_kl(t(0.0, 0.0), t(math.log(3), 0.0)).item()
    assert abs(got - (0.5 * math.log(2 / 3) + 0.5 * math.log(2))) < 1e-12


def test_kl_penalty_splits_gradients():
    # mean KL over valid = (0.02 + 0.04) / 2 = 0.03; alpha = 2, eps = 0.01
    # policy term 2 * 0.03 = 0.06, alpha term 2 * (0.01 - 0.03) = -0.04, dL_alpha/dalpha = -0.02
    kl = t(0.02, 0.04, 1.0).requires_grad_()
    alpha = torch.tensor(2.0, dtype=F, requires_grad=True)
    out = vmpo_losses.kl_penalty(kl, torch.tensor([True, True, False]), alpha, 0.01)
    torch.testing.assert_close(out.policy_loss, torch.tensor(0.06, dtype=F))
    torch.testing.assert_close(out.alpha_loss, torch.tensor(-0.04, dtype=F))
    (grad_alpha,) = torch.autograd.grad(out.alpha_loss, alpha, retain_graph=True)
    assert abs(grad_alpha.item() + 0.02) < 1e-12  # KL above the bound: alpha grows
    (grad_kl,) = torch.autograd.grad(out.policy_loss, kl)
    torch.testing.assert_close(grad_kl, t(1.0, 1.0, 0.0))  # sg[alpha] / |valid|
    assert out.policy_loss.grad_fn is not None and not out.kl.requires_grad


def test_value_loss_over_valid_samples():
    # 0.5 * ((1 - 2)^2 + (2 - 2)^2) / 2 = 0.25
    got = losses.value_loss(t(1, 2, 3), t(2, 2, 0), torch.tensor([True, True, False]))
    assert got.item() == 0.25


def test_running_mean_std_merges_batches():
    stats = RunningMeanStd((1,))
    stats.update(torch.tensor([[1.0], [2.0], [3.0]]))
    stats.update(torch.tensor([[4.0], [5.0]]))
    # population statistics of 1..5: mean 3, variance 2
    torch.testing.assert_close(stats.mean, torch.tensor([3.0], dtype=F))
    torch.testing.assert_close(stats.var, torch.tensor([2.0], dtype=F))
    assert stats.count.item() == 5
    normalized = stats.normalize(torch.tensor([[3.0 + math.sqrt(2.0)], [1e9]]))
    torch.testing.assert_close(normalized, torch.tensor([[1.0], [10.0]]), rtol=1e-4, atol=1e-4)


def test_reward_scaler_divides_by_the_return_std_and_skips_invalid_steps():
    scaler = RewardScaler(num_envs=2, gamma=0.5)
    never = np.zeros(2, dtype=bool)
    # before any statistics: std 1
    np.testing.assert_allclose(scaler(np.array([1.0, 3.0]), never, np.array([True, True])),
                               [1.0, 3.0])
    # second step: G = [0.5 * 1 + 2, 3 (invalid: unchanged, not counted)]
    scaler(np.array([2.0, 0.0]), never, np.array([True, False]))
    scaler.update_statistics()  # returns seen: [1, 3, 2.5]
    std = np.sqrt(np.var([1.0, 3.0, 2.5]) + 1e-8)
    out = scaler(np.array([2.0, 100.0]), np.array([False, True]), np.array([True, True]))
    np.testing.assert_allclose(out, np.clip(np.array([2.0, 100.0]) / std, -10, 10), rtol=1e-6)
    assert scaler.discounted_return[1] == 0.0  # env 1's episode ended: its return restarts
    # the statistics survive a state_dict round trip
    restored = RewardScaler(num_envs=2, gamma=0.5)
    restored.load_state_dict(scaler.state_dict())
    np.testing.assert_allclose(restored(np.array([2.0, 0.0]), never, np.ones(2, bool))[0],
                               2.0 / std, rtol=1e-6)


def test_minibatch_weights_estimate_the_rollout_likelihood():
    # weights [0.1, 0.2, 0.3, 0.4] over 4 samples; minibatch {1, 3}: [0.2, 0.4] * 4 / 2
    weights, log_probs = t(0.1, 0.2, 0.3, 0.4), t(-1.0, -2.0, -3.0, -4.0)
    torch.testing.assert_close(vmpo_losses.minibatch_weights(weights, torch.tensor([1, 3])),
                               t(0.4, 0.8))
    # averaged over an equal partition, the minibatch losses are the rollout's (3.0)
    parts = torch.tensor([3, 0, 2, 1]).chunk(2)
    mean = sum(vmpo_losses.weighted_nll(log_probs[p], vmpo_losses.minibatch_weights(weights, p))
               for p in parts) / len(parts)
    torch.testing.assert_close(mean, vmpo_losses.weighted_nll(log_probs, weights))
    assert vmpo_losses.weighted_nll(log_probs, weights).item() == 3.0


def test_explained_variance_over_valid_samples():
    valid = torch.tensor([True, True, True, True, False])
    returns = t(1, 2, 3, 4, 100)  # variance over the valid ones: 1.25
    assert losses.explained_variance(returns, returns, valid).item() == 1.0
    # a constant prediction explains nothing
    assert losses.explained_variance(t(7, 7, 7, 7, 0), returns, valid).item() == 0.0
    # errors [1, -1, 1, -1]: variance 1 -> 1 - 1 / 1.25 = 0.2
    predictions = returns - t(1, -1, 1, -1, 0)
    torch.testing.assert_close(losses.explained_variance(predictions, returns, valid),
                               torch.tensor(0.2, dtype=F))


def test_effective_sample_size():
    assert vmpo_losses.effective_sample_size(t(0.25, 0.25, 0.25, 0.25, 0)).item() == 4.0
    assert vmpo_losses.effective_sample_size(t(1, 0, 0)).item() == 1.0
    # [0.5, 0.25, 0.25]: 1 / (0.25 + 0.0625 + 0.0625) = 2.6667
    torch.testing.assert_close(vmpo_losses.effective_sample_size(t(0.5, 0.25, 0.25)),
                               torch.tensor(8 / 3, dtype=F))


def test_duals_are_log_parameterised():
    from minerva.trainers.vmpo.update import Duals

    duals = Duals(temperature_init=2.0, alpha_init=0.5, num_alphas=2)
    torch.testing.assert_close(duals.eta, torch.tensor(2.0))
    torch.testing.assert_close(duals.alphas, torch.tensor([0.5, 0.5]))
    # a gradient step moves a multiplier by a factor, whatever its size
    (duals.eta + duals.alphas.sum()).backward()
    torch.testing.assert_close(duals.log_eta.grad, torch.tensor(2.0))  # d eta / d log eta = eta
    with torch.no_grad():
        duals.log_alpha.fill_(1e3)
        duals.log_eta.fill_(-1e3)
    duals.project_()
    assert duals.alphas.max().item() == pytest.approx(1e4)
    assert duals.eta.item() == pytest.approx(1e-8)


def test_vmpo_loss_worked_numbers():
    # E-step as in test_e_step_weights_and_temperature_loss: weights [1/4, 3/4],
    # L_eta = 0.05 + 0.5 ln 2; L_pi = 1.75 (test_weighted_nll). Two constraints, eps 0.01:
    # KLs [0.02, 0.04] (mean 0.03) with alpha 2 and [0.01, 0.03] (mean 0.02) with alpha 1:
    # penalties 2 * 0.03 + 1 * 0.02 = 0.08, alpha losses 2 * -0.02 + 1 * -0.01 = -0.05;
    # L = 1.75 + 0.05 + 0.5 ln 2 + 0.03 = 2.176574
    from minerva import reference

    eta = torch.tensor(0.5, dtype=F, requires_grad=True)
    alphas = t(2.0, 1.0).requires_grad_()
    log_probs = t(-1.0, -2.0).requires_grad_()
    kl_mean = t(0.02, 0.04).requires_grad_()
    kl_std = t(0.01, 0.03).requires_grad_()
    out = vmpo_losses.vmpo_loss(
        log_probs, t(0.0, math.log(3) / 2), torch.tensor([True, True]), eta, 0.1,
        (vmpo_losses.KLConstraint(kl_mean, alphas[0], 0.01),
         vmpo_losses.KLConstraint(kl_std, alphas[1], 0.01)), torch.tensor([True, True]),
        vmpo_weights=reference.vmpo_weights)
    torch.testing.assert_close(out.loss, torch.tensor(1.83 + 0.5 * math.log(2), dtype=F))
    torch.testing.assert_close(out.policy_nll, torch.tensor(1.75, dtype=F))
    torch.testing.assert_close(out.kl_penalty, torch.tensor(0.08, dtype=F))
    torch.testing.assert_close(out.alpha_loss, torch.tensor(-0.05, dtype=F))
    torch.testing.assert_close(torch.stack(out.kls), t(0.03, 0.02))
    torch.testing.assert_close(out.weights, t(0.25, 0.75))
    out.loss.backward()
    torch.testing.assert_close(log_probs.grad, t(-0.25, -0.75))  # -psi
    torch.testing.assert_close(kl_mean.grad, t(1.0, 1.0))  # sg[alpha] / |V|
    torch.testing.assert_close(kl_std.grad, t(0.5, 0.5))
    torch.testing.assert_close(alphas.grad, t(-0.02, -0.01))  # each its own epsilon - KL


def _vmpo_loss_oracle(log_probs, advantages, selected, eta, epsilon_eta, constraints, valid,
                      rows):
    """V-MPO's objective in numpy, from the equations (float64)."""
    a = advantages[selected] / eta
    log_mean_exp = np.log(np.mean(np.exp(a - a.max()))) + a.max()
    weights = np.zeros_like(advantages)
    weights[selected] = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
    if rows is not None:
        weights = weights[rows] * len(advantages) / len(rows)
    loss = -(weights * log_probs).sum() + eta * epsilon_eta + eta * log_mean_exp
    for kl, alpha, epsilon in constraints:
        mean_kl = kl[valid].sum() / max(valid.sum(), 1)
        loss += alpha * mean_kl + alpha * (epsilon - mean_kl)
    return loss


@pytest.mark.parametrize("minibatch", [False, True])
def test_vmpo_loss_matches_a_numpy_oracle(minibatch):
    from minerva import reference

    rng = np.random.default_rng(3 + minibatch)
    for _ in range(40):
        size = int(rng.integers(2, 40))
        advantages = rng.normal(size=size) * rng.uniform(0.1, 5)
        valid = rng.random(size) < 0.8
        valid[0] = True
        selected = valid & (advantages >= np.median(advantages[valid]))
        rows = np.sort(rng.choice(size, size // 2 or 1, replace=False)) if minibatch else None
        batch = size if rows is None else len(rows)
        log_probs = rng.normal(size=batch)
        eta = rng.uniform(0.05, 3)
        constraints = [(rng.uniform(0, 0.1, batch), rng.uniform(0.1, 5), 0.01)
                       for _ in range(2)]
        minibatch_valid = valid if rows is None else valid[rows]
        out = vmpo_losses.vmpo_loss(
            torch.tensor(log_probs), torch.tensor(advantages), torch.tensor(selected),
            torch.tensor(eta, dtype=F), 0.05,
            tuple(vmpo_losses.KLConstraint(torch.tensor(k), torch.tensor(a, dtype=F), e)
                  for k, a, e in constraints),
            torch.tensor(minibatch_valid), None if rows is None else torch.tensor(rows),
            vmpo_weights=reference.vmpo_weights)
        expected = _vmpo_loss_oracle(log_probs, advantages, selected, eta, 0.05,
                                     constraints, minibatch_valid, rows)
        assert out.loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
