"""Running statistics for observation and reward normalisation (saved in checkpoints)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class RunningMeanStd(nn.Module):
    r"""Running mean and variance, merged batch by batch (Chan et al.'s parallel update).

    .. math::

        \delta = \mu_B - \mu, \quad n' = n + n_B, \quad \mu' = \mu + \delta \, n_B / n' \\
        \sigma'^2 = \big(n \sigma^2 + n_B \sigma_B^2 + \delta^2 n n_B / n'\big) / n'

    Statistics are float64 buffers, so they follow the module's device and land in its
    ``state_dict``.
    """

    def __init__(self, shape: tuple[int, ...] = (), clip: float = 10.0, epsilon: float = 1e-8):
        super().__init__()
        self.clip = clip
        self.epsilon = epsilon
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor,
               gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Merges a batch of samples (``[B, *shape]``) into the statistics.

        ``gather`` (distributed training) collects every rank's ``[1, K]`` row into
        ``[ranks, K]``: then every rank's batch is merged, in rank order, so that all ranks
        keep the same statistics (those of the union of the batches, up to rounding).
        """
        batch = batch.to(self.mean.device, torch.float64)
        count = batch.shape[0]
        zeros = torch.zeros(self.mean.shape, dtype=torch.float64, device=self.mean.device)
        mean = batch.mean(0) if count else zeros
        var = batch.var(0, unbiased=False) if count else zeros
        if gather is None:
            self._merge(float(count), mean, var)
            return
        row = torch.cat([torch.tensor([float(count)], dtype=torch.float64, device=mean.device),
                         mean.reshape(-1), var.reshape(-1)])
        size = mean.numel()
        for part in gather(row[None]):
            self._merge(float(part[0]), part[1:1 + size].view_as(mean),
                        part[1 + size:].view_as(mean))

    def _merge(self, batch_count: float, batch_mean: torch.Tensor,
               batch_var: torch.Tensor) -> None:
        if batch_count == 0:
            return
        total = self.count + batch_count
        delta = batch_mean - self.mean
        self.var.copy_((self.var * self.count + batch_var * batch_count
                        + delta**2 * self.count * batch_count / total) / total)
        self.mean.add_(delta * batch_count / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``clip((x - mean) / sqrt(var + eps), -clip, clip)`` in ``x``'s dtype."""
        mean = self.mean.to(x.dtype)
        std = torch.sqrt(self.var + self.epsilon).to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)


class RewardScaler(nn.Module):
    r"""Scales rewards by the running standard deviation of the discounted return.

    .. math:: G_t = \gamma (1 - d_{t-1}) G_{t-1} + r_t, \qquad
              \tilde r_t = \mathrm{clip}(r_t / \sqrt{\mathrm{Var}[G] + \epsilon}, \pm 10)

    (what gymnasium's ``NormalizeReward`` does, here one instance for both backends). Only
    valid transitions (not autoreset steps) count. The returns seen are merged into the
    statistics by :meth:`update_statistics`, once per rollout: a per-step update of a few
    numbers costs more in torch calls than the rest of the step.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0):
        super().__init__()
        self.gamma = gamma
        self.clip = clip
        self.return_stats = RunningMeanStd(())
        self.discounted_return = np.zeros(num_envs, dtype=np.float64)
        self._pending: list[np.ndarray] = []
        self._std = 1.0
        self.register_load_state_dict_post_hook(lambda module, keys: module._refresh_std())

    def forward(self, rewards: np.ndarray, done: np.ndarray, valid: np.ndarray) -> np.ndarray:
        self.discounted_return = np.where(valid, self.discounted_return * self.gamma + rewards,
                                          self.discounted_return)
        self._pending.append(self.discounted_return[valid])
        self.discounted_return[done] = 0.0
        return np.clip(rewards / self._std, -self.clip, self.clip).astype(np.float32)

    def update_statistics(
            self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Merges the returns seen since the last call into the running statistics (every
        rank's, with ``gather``: see :meth:`RunningMeanStd.update`)."""
        if self._pending or gather is not None:
            returns = np.concatenate(self._pending) if self._pending else np.zeros(0)
            self.return_stats.update(torch.from_numpy(returns), gather)
            self._pending.clear()
        self._refresh_std()

    def _refresh_std(self) -> None:
        self._std = float(torch.sqrt(self.return_stats.var + self.return_stats.epsilon))

