"""V-MPO losses (Song et al. 2019) as pure functions.

Each takes tensors and returns a scalar loss (or a NamedTuple of them); stop-gradients are
explicit (``detach``), so summing every loss and calling ``backward`` once trains the policy,
the value function and the Lagrange multipliers (``eta``, ``alpha``) each on its own term.
:class:`~minerva.trainers.vmpo.update.VMPOUpdate` combines them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from minerva.native import ops


class EStep(NamedTuple):
    """The non-parametric E-step: which samples are kept and with what weight."""

    weights: torch.Tensor  # [B], sums to 1 over the selected samples, 0 elsewhere
    selected: torch.Tensor  # [B] bool
    temperature_loss: torch.Tensor  # scalar, trains eta only


class KLPenalty(NamedTuple):
    policy_loss: torch.Tensor  # sg[alpha] * KL: trains the policy
    alpha_loss: torch.Tensor  # alpha * (epsilon - sg[KL]): trains alpha
    kl: torch.Tensor  # the mean KL, detached, for logging


def e_step(
    advantages: torch.Tensor,
    selected: torch.Tensor,
    eta: torch.Tensor,
    epsilon_eta: float,
    vmpo_weights=ops.vmpo_weights,
) -> EStep:
    r"""Weights of the selected samples and the temperature (dual) loss.

    .. math::

        \psi_i = \frac{\exp(A_i / \eta)}{\sum_{j \in S} \exp(A_j / \eta)} \quad (i \in S) \\
        L_\eta = \eta \, \epsilon_\eta + \eta \log \Big( \frac{1}{|S|}
                 \sum_{j \in S} \exp(A_j / \eta) \Big)

    ``S`` (``selected``) is the top-k of the valid advantages (:func:`minerva.ops.topk_mask`).
    Advantages are treated as constants; the weights carry no gradient (they are targets
    for the M-step), and :math:`L_\eta` trains ``eta`` through the native op's autograd
    (``vmpo_weights`` may be :func:`minerva.reference.vmpo_weights` instead).
    """
    weights, log_mean_exp = vmpo_weights(advantages.detach(), selected, eta)
    temperature_loss = eta * epsilon_eta + eta * log_mean_exp
    return EStep(weights.detach(), selected, temperature_loss)


def weighted_nll(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r"""The M-step's weighted maximum likelihood term.

    .. math:: L_\pi = -\sum_i \psi_i \log \pi_\theta(a_i \mid s_i)

    ``weights`` are the E-step's :math:`\psi` (zero off the selected samples).
    """
    return -(weights * log_probs).sum()


def minibatch_weights(weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    r"""A minibatch's share of the rollout's E-step weights, scaled so that its weighted
    likelihood is an unbiased estimate of the whole rollout's.

    .. math:: \psi^{M}_i = \psi_i \, |B| / |M| \quad (i \in M \subset B)

    Averaged over the minibatches of a partition into equal parts, the minibatch losses
    :func:`weighted_nll` equal the rollout's.
    """
    return weights[indices] * (weights.shape[0] / indices.shape[0])


def kl_penalty(kl_per_sample: torch.Tensor, valid: torch.Tensor, alpha: torch.Tensor,
               epsilon: float) -> KLPenalty:
    r"""A KL trust region enforced with a Lagrange multiplier :math:`\alpha`.

    .. math::

        \overline{KL} = \frac{1}{|V|} \sum_{i \in V} KL_i \\
        L^{\pi}_\alpha = \mathrm{sg}[\alpha] \, \overline{KL}, \qquad
        L_\alpha = \alpha \, (\epsilon - \mathrm{sg}[\overline{KL}])

    Minimising :math:`L_\alpha` raises :math:`\alpha` while the KL exceeds :math:`\epsilon`
    and lowers it otherwise; :math:`L^{\pi}_\alpha` pulls the policy back by that much.
    """
    kl = torch.where(valid, kl_per_sample, 0).sum() / valid.sum().clamp(min=1)
    return KLPenalty(alpha.detach() * kl, alpha * (epsilon - kl.detach()), kl.detach())


class KLConstraint(NamedTuple):
    """One trust region of :func:`vmpo_loss`: its KL per sample (``[B]``), its multiplier
    (a scalar) and its bound."""

    kl_per_sample: torch.Tensor
    alpha: torch.Tensor
    epsilon: float


class VMPOLoss(NamedTuple):
    """:func:`vmpo_loss`'s loss and its terms (the terms detached, for statistics)."""

    loss: torch.Tensor  # scalar: every term, to call backward on
    policy_nll: torch.Tensor  # the M-step's weighted likelihood term
    temperature_loss: torch.Tensor  # L_eta
    kl_penalty: torch.Tensor  # sum of sg[alpha] * KL
    alpha_loss: torch.Tensor  # sum of alpha * (epsilon - sg[KL])
    kls: tuple[torch.Tensor, ...]  # each constraint's mean KL
    weights: torch.Tensor  # the rollout's E-step weights ([B_rollout], detached)


def vmpo_loss(
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    selected: torch.Tensor,
    eta: torch.Tensor,
    epsilon_eta: float,
    constraints: tuple[KLConstraint, ...],
    valid: torch.Tensor,
    rows: torch.Tensor | None = None,
    vmpo_weights=ops.vmpo_weights,
) -> VMPOLoss:
    r"""V-MPO's policy objective on a minibatch (in the shape of rlax's ``vmpo_loss``).

    .. math::

        L = \underbrace{-\sum_{i \in M} \psi^M_i \log \pi_\theta(a_i \mid s_i)}_{L_\pi}
          + \underbrace{\eta \epsilon_\eta + \eta \log \tfrac{1}{|S|}
                         \textstyle\sum_{j \in S} e^{A_j / \eta}}_{L_\eta}
          + \sum_k \Big( \mathrm{sg}[\alpha_k] \, \overline{KL}_k
                          + \alpha_k (\epsilon_k - \mathrm{sg}[\overline{KL}_k]) \Big)

    ``advantages`` and ``selected`` (the top-k, :func:`minerva.ops.topk_mask`) are the whole
    rollout's: the E-step's weights :math:`\psi` are normalised over all its selected samples
    (:func:`e_step`), and the minibatch (``rows`` of the rollout; None: all of it) takes its
    share of them (:func:`minibatch_weights`). ``log_probs`` are the minibatch's. Each
    constraint (:func:`kl_penalty`) is over the minibatch's ``valid``
    samples. Summed and backpropagated once, the loss trains the policy on :math:`L_\pi` and
    the penalties, :math:`\eta` on :math:`L_\eta` and each :math:`\alpha_k` on its own term.
    """
    estep = e_step(advantages, selected, eta, epsilon_eta, vmpo_weights=vmpo_weights)
    weights = estep.weights if rows is None else minibatch_weights(estep.weights, rows)
    nll = weighted_nll(log_probs, weights)
    penalties = [kl_penalty(c.kl_per_sample, valid, c.alpha, c.epsilon) for c in constraints]
    penalty = sum((p.policy_loss for p in penalties), torch.zeros_like(nll))
    alpha_loss = sum((p.alpha_loss for p in penalties), torch.zeros_like(nll))
    return VMPOLoss(nll + estep.temperature_loss + penalty + alpha_loss, nll.detach(),
                    estep.temperature_loss.detach(), penalty.detach(), alpha_loss.detach(),
                    tuple(p.kl for p in penalties), estep.weights)


def gaussian_kl_mean(mean_old: torch.Tensor, std_old: torch.Tensor,
                     mean: torch.Tensor) -> torch.Tensor:
    r"""Decoupled KL of the mean (the old covariance is kept), per sample.

    .. math:: C_\mu = \tfrac12 \sum_d (\mu_d - \mu^{old}_d)^2 / (\sigma^{old}_d)^2
    """
    return 0.5 * (((mean - mean_old) / std_old) ** 2).sum(-1)


def gaussian_kl_std(std_old: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    r"""Decoupled KL of the standard deviation (the old mean is kept), per sample.

    .. math:: C_\sigma = \tfrac12 \sum_d \Big( \frac{(\sigma^{old}_d)^2}{\sigma_d^2} - 1
              + 2 \log \frac{\sigma_d}{\sigma^{old}_d} \Big)
    """
    ratio = (std_old / std) ** 2
    return 0.5 * (ratio - 1.0 - torch.log(ratio)).sum(-1)


def categorical_kl(logits_old: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    r"""KL of the old categorical policy to the new one, per sample.

    .. math:: KL = \sum_a p^{old}_a (\log p^{old}_a - \log p_a)
    """
    log_p_old = F.log_softmax(logits_old, dim=-1)
    return (log_p_old.exp() * (log_p_old - F.log_softmax(logits, dim=-1))).sum(-1)


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    r"""Kish's effective sample size of normalised weights.

    .. math:: ESS = 1 / \sum_i \psi_i^2

    It is :math:`|S|` for uniform weights over :math:`S` and 1 when one sample has them all.
    """
    return 1.0 / weights.square().sum()
