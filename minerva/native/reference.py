"""Pure-torch references for every native op, and a pure-Python rollout storage.

These are the implementations a Python user would write: a loop over time for GAE, torch's
``topk`` for the selection, a masked softmax for the weights. They define the ops' semantics,
serve as the fallback when the native library is missing, and are what the tests and
benchmarks compare the native code against. Signatures match :mod:`minerva.ops`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from minerva.native.checks import check_gae_args, check_topk_args, check_weights_args
from minerva.native.layout import RolloutViews

__all__ = ["gae", "topk_mask", "vmpo_weights", "RolloutStorage"]


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalised advantage estimation over a ``[T, N]`` rollout.

    .. math::

        \delta_t = r_t + \gamma (1 - \mathrm{terminated}_t) V'_t - V_t \\
        A_t = \delta_t + \gamma \lambda (1 - \mathrm{done}_t) A_{t+1}, \quad A_T = 0 \\
        R_t = A_t + V_t

    ``V'_t = next_values[t]`` is V of the observation that followed step t: the true final
    observation when the episode ended there, so a truncated episode (``done`` but not
    ``terminated``) still bootstraps from it while a terminated one does not.
    ``done = terminated | truncated``. ``lam = 1`` gives discounted returns (the ``returns``
    estimator) and ``lam = 0`` one-step TD advantages (``dae``).

    Returns ``(advantages, returns)``, both ``[T, N]`` in the dtype of ``rewards``.
    """
    check_gae_args(rewards, values, next_values, terminated, done, gamma, lam)
    not_terminated = (~terminated).to(rewards.dtype)
    not_done = (~done).to(rewards.dtype)
    advantages = torch.empty_like(rewards, memory_format=torch.contiguous_format)
    next_advantage = rewards.new_zeros(rewards.shape[1])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * not_terminated[t] * next_values[t] - values[t]
        next_advantage = delta + gamma * lam * not_done[t] * next_advantage
        advantages[t] = next_advantage
    return advantages, advantages + values


def topk_mask(advantages: torch.Tensor, valid: torch.Tensor, fraction: float) -> torch.Tensor:
    r"""Selects the top ``fraction`` of the valid advantages.

    .. math::

        n = \sum_i \mathrm{valid}_i, \quad k = \max(1, \lfloor \mathrm{fraction} \cdot n \rfloor)
        \\ \mathrm{selected}_i = \mathrm{valid}_i \wedge (a_i \ge a_{(k)})

    where :math:`a_{(k)}` is the k-th largest valid advantage. Ties with it are all selected,
    so more than k entries may be chosen. ``n = 0`` selects nothing. ``0 < fraction <= 1``.
    """
    check_topk_args(advantages, valid, fraction)
    candidates = advantages[valid]
    if candidates.numel() == 0:
        return torch.zeros_like(valid)
    if torch.isnan(candidates).any():
        raise ValueError("minerva.topk_mask: advantages contain NaN at valid positions")
    k = max(1, math.floor(fraction * candidates.numel()))
    kth_largest = torch.topk(candidates, k, sorted=False).values.min()
    return valid & (advantages >= kth_largest)


def vmpo_weights(
    advantages: torch.Tensor, selected: torch.Tensor, eta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""V-MPO's non-parametric E-step weights and the temperature's log-mean-exp.

    .. math::

        w_i = \frac{\exp(a_i / \eta)}{\sum_{j \in S} \exp(a_j / \eta)} \ (i \in S), \quad
        w_i = 0 \ (i \notin S) \\
        \mathrm{log\_mean\_exp} = \log \frac{1}{|S|} \sum_{j \in S} \exp(a_j / \eta)

    computed stably (the maximum is subtracted). The temperature loss of V-MPO is
    ``eta * epsilon_eta + eta * log_mean_exp``; both outputs are differentiable in ``eta``
    (and in ``advantages``). An empty ``S`` gives zero weights and ``log_mean_exp = 0``.
    """
    check_weights_args(advantages, selected, eta)
    if not eta.item() > 0 or not math.isfinite(eta.item()):
        raise ValueError(f"minerva.vmpo_weights: eta must be positive and finite, got {eta.item()}")
    chosen = advantages[selected]
    if chosen.numel() == 0:
        return torch.zeros_like(advantages), (eta * 0).reshape(())
    if torch.isnan(chosen).any():
        raise ValueError("minerva.vmpo_weights: advantages contain NaN at selected positions")
    # the maximum subtracted before dividing: with a tiny eta, a / eta alone overflows (and
    # inf - inf is NaN), where (a - max) / eta goes to -inf and the weight to the maximum
    top = chosen.max().detach()
    scaled = (chosen - top) / eta
    log_mean_exp = top / eta + torch.logsumexp(scaled, dim=0) - math.log(chosen.numel())
    weights = torch.zeros_like(advantages).masked_scatter(selected, torch.softmax(scaled, dim=0))
    return weights, log_mean_exp


def _storable(source: torch.dtype, buffer: torch.dtype) -> bool:
    """Which inputs a buffer takes without losing meaning, as the native storage decides:
    float32 buffers take float32/64, integers (unsigned up to 32 bits) and bools; int64
    buffers integers (unsigned up to 32 bits); uint8 observations and bool flags their own
    dtype only."""
    if source.is_complex:
        return False
    integer = not source.is_floating_point and source != torch.bool
    exact_integer = integer and (source.is_signed or source.itemsize <= 4)
    if buffer == torch.float32:
        return ((source.is_floating_point and source.itemsize in (4, 8)) or exact_integer
                or source == torch.bool)
    if buffer == torch.int64:
        return exact_integer
    return source == buffer


class RolloutStorage(RolloutViews):
    """Pure-Python rollout storage with the interface of :class:`minerva.RolloutStorage`.

    Every field is a torch tensor written with one ``copy_`` per field and step. It is the
    benchmark baseline for the native storage, and takes its place when that did not load.
    """

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        observation_shape: tuple[int, ...],
        action_shape: tuple[int, ...] = (),
        *,
        discrete_actions: bool = False,
        dist_params_dim: int = 0,
        observation_dtype: torch.dtype = torch.float32,
    ) -> None:
        layout = self._layout(num_steps, num_envs, observation_shape, action_shape,
                              discrete_actions, dist_params_dim, observation_dtype)
        self.num_steps, self.num_envs = num_steps, num_envs
        self._step = 0
        self._tensors = {
            name: torch.zeros((num_steps, num_envs, *trailing), dtype=dtype)
            for name, (dtype, trailing) in layout.items()
        }

    @property
    def step(self) -> int:
        return self._step

    @property
    def full(self) -> bool:
        return self._step == self.num_steps

    def reset(self) -> None:
        self._step = 0

    def insert(self, observations, actions, log_probs, dist_params, values, rewards,
               terminated, truncated, valid=None) -> None:
        if self.full:
            raise ValueError(
                f"RolloutStorage.insert: the storage is full ({self.num_steps} steps); "
                "call reset() before inserting more"
            )
        fields = {"observations": observations, "actions": actions, "log_probs": log_probs,
                  "dist_params": dist_params, "values": values, "rewards": rewards,
                  "terminated": terminated, "truncated": truncated, "valid": valid}
        if dist_params is None and self._tensors["dist_params"].shape[-1] == 0:
            del fields["dist_params"]
        if valid is None:
            del fields["valid"]
            self._tensors["valid"][self._step] = True
        for name, value in fields.items():
            row = self._tensors[name][self._step]
            if isinstance(value, np.ndarray) and not value.dtype.isnative:  # as native does
                value = value.astype(value.dtype.newbyteorder("="))
            source = torch.as_tensor(value)
            if source.shape != row.shape:
                raise ValueError(
                    f"RolloutStorage.insert: {name} must have shape {tuple(row.shape)}, "
                    f"got {tuple(source.shape)}"
                )
            if not _storable(source.dtype, row.dtype):
                raise TypeError(
                    f"RolloutStorage.insert: {name} cannot be stored as "
                    f"{str(row.dtype).removeprefix('torch.')} (got dtype "
                    f"{str(source.dtype).removeprefix('torch.')})"
                )
            row.copy_(source)
        self._step += 1
