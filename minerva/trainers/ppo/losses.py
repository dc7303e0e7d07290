"""PPO losses (Schulman et al. 2017) as pure functions, masked by ``valid`` (the rollout's
real transitions). :class:`~minerva.trainers.ppo.update.PPOUpdate` combines them."""

from __future__ import annotations

from typing import NamedTuple

import torch

from minerva.losses import masked_mean


class Surrogate(NamedTuple):
    loss: torch.Tensor  # the clipped surrogate, to minimise
    approx_kl: torch.Tensor  # detached: an estimate of KL(old || new) on the samples
    clip_fraction: torch.Tensor  # detached: the share of samples whose ratio was clipped


def clipped_surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor,
                      advantages: torch.Tensor, clip: float, valid: torch.Tensor) -> Surrogate:
    r"""PPO's clipped policy objective, negated to a loss.

    .. math::

        r_i = \exp(\log\pi_\theta(a_i|s_i) - \log\pi_{old}(a_i|s_i)) \\
        L^{clip} = -\frac{1}{|V|} \sum_{i \in V}
                   \min\big(r_i A_i,\ \mathrm{clip}(r_i, 1 - \epsilon, 1 + \epsilon) A_i\big)

    ``approx_kl`` is the unbiased, non-negative estimator :math:`(r - 1) - \log r`; the clip
    fraction counts :math:`|r - 1| > \epsilon`.
    """
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), valid)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, valid)
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip).float(), valid)
    return Surrogate(loss, approx_kl, clip_fraction)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float, valid: torch.Tensor) -> torch.Tensor:
    r"""The critic's regression with its change per update clipped, as in PPO's reference
    implementation: the worse of the clipped and the unclipped errors.

    .. math:: L_V = \frac{1}{|V|} \sum_{i \in V} \tfrac12 \max\big((V_i - G_i)^2,\
              (V^{old}_i + \mathrm{clip}(V_i - V^{old}_i, -\epsilon, \epsilon) - G_i)^2\big)
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    errors = torch.maximum((values - returns).square(), (clipped - returns).square())
    return masked_mean(0.5 * errors, valid)
