"""Losses and statistics every on-policy algorithm shares, as pure functions.

Masked by ``valid`` (the rollout's real transitions) without boolean indexing, which would
synchronise a GPU. Each algorithm's own losses live beside its update
(:mod:`minerva.trainers.vmpo.losses`, :mod:`minerva.trainers.ppo.losses`).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` where ``mask`` holds (0 for an empty mask), without boolean indexing,
    which would synchronise a GPU."""
    return torch.where(mask, x, 0).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The (population) variance of ``x`` where ``mask`` holds."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def normalize_advantages(advantages: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    r"""Standardises advantages with the statistics of the valid samples.

    .. math:: \hat A_i = (A_i - \mu_V) / (\sigma_V + 10^{-8}),
              \quad \mu_V, \sigma_V \text{ over } \{i : \mathrm{valid}_i\}

    Invalid samples are set to 0 (they are never selected downstream).
    """
    mean = masked_mean(advantages, valid)
    return torch.where(valid, (advantages - mean) / (masked_var(advantages, valid).sqrt() + 1e-8),
                       0)


def value_loss(values: torch.Tensor, returns: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    r"""Regression of the value function to the rollout's returns, over valid samples.

    .. math:: L_V = \frac{1}{|V|} \sum_{i \in V} \tfrac12 (V_\phi(s_i) - G_i)^2
    """
    return masked_mean(0.5 * (values - returns.detach()) ** 2, valid)


def explained_variance(predictions: torch.Tensor, targets: torch.Tensor,
                       valid: torch.Tensor) -> torch.Tensor:
    r"""How much of the targets' variance the predictions explain, over valid samples.

    .. math:: EV = 1 - \mathrm{Var}_V[G - V_\phi] / \mathrm{Var}_V[G]

    1 is a perfect critic, 0 one no better than a constant; negative is worse than a
    constant. NaN when the targets do not vary.
    """
    return 1.0 - masked_var(targets - predictions, valid) / masked_var(targets, valid)
