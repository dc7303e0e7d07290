"""The rollout storage's layout, stated once, and what the native and the reference storage
share: the buffers' names, dtypes and shapes (checked by the constructor), their torch views,
and the flattened batch."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

_MAX_SIZE = 2**63 - 1


class RolloutBatch(NamedTuple):
    """A rollout flattened to ``[T * N, ...]`` (views, not copies, on the CPU)."""

    observations: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    dist_params: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    valid: torch.Tensor


class _Buffer:
    """A read-only attribute exposing one ``[T, N, ...]`` buffer as a torch tensor."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, storage, owner=None) -> torch.Tensor:
        if storage is None:
            return self
        return storage._tensors[self.name]


class RolloutViews:
    """The torch-facing half shared by the native and the reference storage."""

    observations = _Buffer()
    actions = _Buffer()
    log_probs = _Buffer()
    dist_params = _Buffer()
    values = _Buffer()
    rewards = _Buffer()
    terminated = _Buffer()
    truncated = _Buffer()
    valid = _Buffer()
    advantages = _Buffer()
    returns = _Buffer()

    _tensors: dict[str, torch.Tensor]

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """Every ``[T, N, ...]`` buffer by name, as torch tensors sharing the storage's
        memory (a new dict; the tensors are the storage's)."""
        return dict(self._tensors)

    @classmethod
    def bytes_per_step(cls, observation_shape: tuple[int, ...], action_shape: tuple[int, ...],
                       discrete_actions: bool, dist_params_dim: int,
                       observation_dtype: torch.dtype) -> int:
        """The bytes one step of one env takes in the storage, every buffer counted."""
        layout = cls._layout(1, 1, observation_shape, action_shape, discrete_actions,
                             dist_params_dim, observation_dtype)
        return sum(dtype.itemsize * math.prod(trailing) for dtype, trailing in layout.values())

    @staticmethod
    def _layout(num_steps, num_envs, observation_shape, action_shape, discrete_actions,
                dist_params_dim, observation_dtype) -> dict[str, tuple[torch.dtype, tuple]]:
        """Checks the constructor's arguments; returns name -> (dtype, shape after [T, N])."""
        for name, value in (("num_steps", num_steps), ("num_envs", num_envs)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"RolloutStorage: {name} must be an integer >= 1, got {value!r}")
        observation_shape, action_shape = tuple(observation_shape), tuple(action_shape)
        if any(d < 1 for d in observation_shape + action_shape):
            raise ValueError(
                "RolloutStorage: observation_shape and action_shape entries must be >= 1, got "
                f"{observation_shape} and {action_shape}"
            )
        if discrete_actions and action_shape:
            raise ValueError(
                "RolloutStorage: discrete actions are one integer per env; action_shape must "
                f"be (), got {action_shape}"
            )
        if (not isinstance(dist_params_dim, (int, np.integer)) or isinstance(dist_params_dim, bool)
                or dist_params_dim < 0):
            raise ValueError(f"RolloutStorage: dist_params_dim must be an integer >= 0, got "
                             f"{dist_params_dim!r}")
        sizes = {"num_steps": num_steps, "num_envs": num_envs,
                 "observation_shape": max(observation_shape, default=1),
                 "action_shape": max(action_shape, default=1), "dist_params_dim": dist_params_dim}
        for name, size in sizes.items():
            if size > _MAX_SIZE:  # the native storage's sizes are int64
                raise OverflowError(f"RolloutStorage: {name} holds {size}, more than any buffer "
                                    f"can be (at most {_MAX_SIZE})")
        if observation_dtype not in (torch.float32, torch.uint8):
            raise ValueError(
                f"RolloutStorage: observation_dtype must be torch.float32 or torch.uint8, got "
                f"{observation_dtype}"
            )
        scalar = (torch.float32, ())
        flag = (torch.bool, ())
        return {
            "observations": (observation_dtype, observation_shape),
            "actions": (torch.int64 if discrete_actions else torch.float32, action_shape),
            "log_probs": scalar,
            "dist_params": (torch.float32, (dist_params_dim,)),
            "values": scalar,
            "rewards": scalar,
            "terminated": flag,
            "truncated": flag,
            "valid": flag,
            "advantages": scalar,
            "returns": scalar,
        }

    def batch(self, device: torch.device | str | None = None) -> RolloutBatch:
        """The rollout flattened to ``[T * N, ...]``; views of the buffers unless ``device``
        asks for another device (then one non-blocking copy per field)."""
        tensors = self._tensors
        if device is not None:
            tensors = {name: tensors[name].to(device, non_blocking=True)
                       for name in RolloutBatch._fields}
        return flatten(tensors)


def flatten(tensors: dict[str, torch.Tensor]) -> RolloutBatch:
    """The batch fields of ``[T, N, ...]`` buffers, flattened to ``[T * N, ...]`` (views)."""
    return RolloutBatch(**{name: tensors[name].flatten(0, 1) for name in RolloutBatch._fields})
