"""Rollout storage: preallocated ``[T, N, ...]`` buffers for one V-MPO update.

:class:`RolloutStorage` is native (``minerva._rollout_storage``, pybind11): ``insert`` takes
envpool's numpy arrays (or CPU torch tensors), checks every shape and dtype, and copies all
fields in one pass with the GIL released, converting float64 observations to float32 on the
way. Its buffers are torch tensors that share the native memory. :mod:`minerva.reference`
has a pure-Python storage with the same interface.

Per step ``t`` it stores what an update needs: ``observations``, ``actions``, ``log_probs``
(behaviour policy), ``dist_params`` (the behaviour distribution's parameters, for the KL
terms), ``values``, ``rewards``, ``terminated``, ``truncated`` and ``valid`` (False for
transitions that are not experience, such as envpool's reset step), and has room for the
``advantages`` and ``returns``. Advantages are computed by one op, :func:`minerva.ops.gae`,
where the update runs (the trainer scores the values in one batch after the rollout, on the
update's device: :func:`minerva.collector.advantages_from_critic`).
"""

from __future__ import annotations

import torch

from minerva.native import loading
from minerva.native.layout import RolloutBatch, RolloutViews

__all__ = ["RolloutBatch", "RolloutStorage", "RolloutViews"]


_NativeStorage = loading.rollout_storage_class()


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
    from minerva.native.reference import RolloutStorage
