"""Rollout storage: preallocated ``[T, N, ...]`` buffers for one V-MPO update.

:class:`RolloutStorage` is native (``minerva._rollout_storage``, pybind11): ``insert`` takes
envpool's numpy arrays (or CPU torch tensors), checks every shape and dtype, and copies all
fields in one pass with the GIL released, converting float64 observations to float32 on the
way. Its buffers are torch tensors that share the native memory. :mod:`minerva.reference`
has a pure-Python storage with the same interface.

Per step ``t`` it stores what the V-MPO update needs: ``observations``, ``actions``,
``log_probs`` (behaviour policy), ``dist_params`` (the behaviour distribution's parameters,
for the KL terms), ``values``, ``rewards``, ``terminated``, ``truncated`` and ``valid``
(False for transitions that are not experience, such as envpool's reset step).
``next_values[t]`` is filled with ``values[t + 1]`` when step ``t + 1`` is inserted (with
next-step autoreset, the observation after a finished step is its true final observation)
and with ``last_values`` by :meth:`compute_advantages`; overwrite rows after the next insert
if your environments autoreset differently.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from minerva import _native


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
    next_values = _Buffer()
    rewards = _Buffer()
    terminated = _Buffer()
    truncated = _Buffer()
    valid = _Buffer()
    advantages = _Buffer()
    returns = _Buffer()

    _tensors: dict[str, torch.Tensor]

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
        if dist_params_dim < 0:
            raise ValueError(f"RolloutStorage: dist_params_dim must be >= 0, got {dist_params_dim}")
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
            "next_values": scalar,
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
        fields = {}
        for name in RolloutBatch._fields:
            tensor = self._tensors[name].flatten(0, 1)
            fields[name] = tensor if device is None else tensor.to(device, non_blocking=True)
        return RolloutBatch(**fields)


_NativeStorage = _native.rollout_storage_class()


class RolloutStorage(RolloutViews, _NativeStorage or object):
    """Native rollout storage. See the module docstring for what each buffer holds.

    Args:
        num_steps: ``T``, steps per rollout.
        num_envs: ``N``, environments stepped together.
        observation_shape: shape of one observation.
        action_shape: shape of one continuous action; ``()`` for discrete actions.
        discrete_actions: store actions as int64 indices instead of float32 vectors.
        dist_params_dim: size of the behaviour distribution's parameter vector per step
            (e.g. ``2 * action_dim`` for a diagonal Gaussian's mean and log-std, or the
            number of actions for a categorical's logits); 0 stores none.
        observation_dtype: ``torch.float32`` (any real or integer input is converted) or
            ``torch.uint8`` (for image observations; only uint8 input is accepted).
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
        self._layout(num_steps, num_envs, observation_shape, action_shape, discrete_actions,
                     dist_params_dim, observation_dtype)
        super().__init__(
            int(num_steps), int(num_envs), list(observation_shape), list(action_shape),
            bool(discrete_actions), int(dist_params_dim), observation_dtype == torch.uint8,
        )
        self._tensors = {name: torch.from_numpy(array) for name, array in self._arrays().items()}


if _NativeStorage is None:  # the native module did not load: the reference takes its place
    from minerva.reference import RolloutStorage  # noqa: E402, F811
