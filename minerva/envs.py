"""Vector environments: one interface over envpool and gymnasium.

Both backends autoreset on the **next step**, which is envpool's behaviour and gymnasium
1.x's default: the step that ends an episode returns the true last observation, and the
step after it ignores the action and returns the reset observation with reward 0 and
``terminated = truncated = False``. That reset step is not experience; the trainer masks
it out of the rollout.

Seeding is the same on both backends: environment ``i`` gets ``seed + i``.

Observations are passed through in the backend's dtype (envpool's MuJoCo gives float64;
the rollout storage converts). ``Dict``/``Tuple`` observations are flattened into one
``Box``. Rewards are float32 on both backends (envpool's dtype).

envpool does not validate actions (too few rows aborts the process, out-of-range discrete
actions can segfault, NaN is silently simulated), so :meth:`VectorEnv.step` passes every
batch through :func:`validate_actions` first, whichever the backend.
"""

from __future__ import annotations

import abc
import contextlib
import os
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Self

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from minerva.env_ids import (  # noqa: F401  (this module's names too)
    BACKENDS,
    available_backends,
    check_backend,
    default_backend,
    env_spaces,
    envpool_env_ids,
    supported_observation_box,
)
from minerva.errors import first_line

#: ``make_env(env_id, seed) -> thunk`` creating one gymnasium env
EnvFactory = Callable[[str, int], Callable[[], gym.Env]]

# Box actions may exceed the bounds by float rounding (e.g. a tanh squash rescaled in
# float32); within this relative slack they are clipped, beyond it they are an error.
_BOUNDS_RTOL = 1e-5


class StepResult(NamedTuple):
    """One batched step, ``[N, ...]`` arrays."""

    observations: np.ndarray
    rewards: np.ndarray  # float32
    terminated: np.ndarray  # bool
    truncated: np.ndarray  # bool
    infos: dict[str, Any]


def validate_actions(actions: Any, action_space: spaces.Space, num_envs: int) -> np.ndarray:
    """Checks a batch of actions and returns the array to send to the environments.

    ``Discrete``: shape ``(num_envs,)``, an integer dtype, ``start <= a < start + n``;
    returned as int32 (what envpool takes). ``Box``: shape ``(num_envs, *shape)``, finite
    real values within the bounds (up to float rounding, which is clipped); returned in the
    space's dtype (envpool's MuJoCo takes float64, its classic control float32).

    Raises:
        ValueError: naming what is wrong, e.g. ``actions contain NaN at env 3``.
    """
    try:
        array = np.asarray(actions)
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. a CUDA or grad tensor
        raise ValueError(
            f"actions must be array-like (a numpy array or a CPU tensor), got "
            f"{type(actions).__name__}: {error}"
        ) from error
    expected = (num_envs, *action_space.shape)
    if array.shape != expected:
        raise ValueError(f"actions must have shape {expected}, got {array.shape}")

    if isinstance(action_space, spaces.Discrete):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"discrete actions must be integers, got dtype {array.dtype}")
        start, stop = int(action_space.start), int(action_space.start + action_space.n)
        bad = np.flatnonzero((array < start) | (array >= stop))
        if bad.size:
            env = int(bad[0])
            raise ValueError(f"action {array[env]} out of range [{start}, {stop}) at env {env}")
        return array.astype(np.int32)

    if isinstance(action_space, spaces.Box):
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"continuous actions must be real numbers, got dtype {array.dtype}")

        def first(bad: np.ndarray) -> tuple[tuple[int, ...], str]:
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            dim = index[1:]
            return index, f"env {index[0]}" + (f", dimension {', '.join(map(str, dim))}"
                                               if dim else "")

        if not np.isfinite(array).all():
            index, where = first(~np.isfinite(array))
            if np.isnan(array[index]):
                raise ValueError(f"actions contain NaN at {where}")
            raise ValueError(f"actions contain inf at {where} (value {array[index]})")
        low, high = action_space.low, action_space.high
        # the slack in float64: at bounds of float32's largest value it overflows float32
        low64, high64 = low.astype(np.float64), high.astype(np.float64)
        outside = (array < low64 - _BOUNDS_RTOL * (1 + np.abs(low64))) | (
            array > high64 + _BOUNDS_RTOL * (1 + np.abs(high64))
        )
        if outside.any():
            index, where = first(outside)
            dim = index[1:]
            raise ValueError(
                f"action {array[index]} out of bounds [{low[dim]}, {high[dim]}] at {where}"
            )
        # clipped before the cast, so a value within the slack of a bound at float32's
        # largest value does not round to inf
        with np.errstate(over="ignore"):
            actions = np.clip(array, low, high).astype(action_space.dtype, copy=False)
        if not np.can_cast(array.dtype, actions.dtype) and not np.isfinite(actions).all():
            index, where = first(~np.isfinite(actions))
            raise ValueError(f"action {array[index]} at {where} overflows the action space's "
                             f"dtype {actions.dtype}")
        return actions

    raise ValueError(f"unsupported action space {action_space}")


def _flatten_observations(space: spaces.Space, observations: Any, num_envs: int) -> np.ndarray:
    """Flattens batched ``Dict``/``Tuple`` observations into ``[N, D]`` in the order of
    :func:`gymnasium.spaces.flatten_space`; a ``Box`` batch is returned unchanged."""
    if isinstance(space, spaces.Dict):
        parts = [_flatten_observations(s, observations[k], num_envs) for k, s in space.items()]
    elif isinstance(space, spaces.Tuple):
        parts = [_flatten_observations(s, o, num_envs)
                 for s, o in zip(space, observations, strict=True)]
    else:
        return observations
    return np.concatenate([p.reshape(num_envs, -1) for p in parts], axis=1)


class _Environments:
    """A context manager that closes the environments; named by id and count."""

    env_id: str
    num_envs: int

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id!r}, num_envs={self.num_envs})"


class VectorEnv(_Environments, abc.ABC):
    """``num_envs`` environments stepped together, with next-step autoreset.

    A context manager; :meth:`close` releases the backend's environments.
    """

    backend: str  # "envpool" | "gymnasium"

    def __init__(self, env: gym.vector.VectorEnv, env_id: str, num_envs: int) -> None:
        # Both backends' environments are gymnasium vector envs (envpool's subclass it).
        self._env = env
        self.env_id = env_id
        self.num_envs = num_envs
        self._needs_reset = True
        self._in_flight = False
        self._closed = False
        # Read once: envpool rebuilds its spaces on every access.
        self._raw_observation_space = env.single_observation_space
        action_space = env.single_action_space
        try:
            self.single_observation_space = supported_observation_box(
                env_id, self._raw_observation_space, action_space)
        except ValueError:
            env.close()
            raise
        self.single_action_space: spaces.Box | spaces.Discrete = action_space

    @abc.abstractmethod
    def _reset(self, seed: int | None) -> Any:
        """Resets every environment (seeding as the backend needs); returns observations."""

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Resets every environment; returns ``[N, *obs_shape]`` observations.

        ``seed`` reseeds env ``i`` with ``seed + i`` on the gymnasium backend. envpool cannot
        reseed: its envs keep the seeds they were made with and continue their streams.
        """
        self._check_open()
        if self._in_flight:  # a step was started and never received: finish it first
            self.recv()
        observations = self._reset(seed)
        self._needs_reset = False
        return _flatten_observations(self._raw_observation_space, observations, self.num_envs)

    def step(self, actions: Any) -> StepResult:
        """Validates ``actions`` (see :func:`validate_actions`) and steps every environment."""
        self.send(actions)
        return self.recv()

    def send(self, actions: Any) -> None:
        """Validates ``actions`` and starts the step; :meth:`recv` returns its result. On
        envpool the environments step in envpool's threads meanwhile; on gymnasium the step
        runs in :meth:`recv`."""
        self._check_open()
        if self._needs_reset:
            raise RuntimeError(f"{self!r}: call reset() before step()")
        if self._in_flight:
            raise RuntimeError(f"{self!r}: send() twice without recv()")
        self._send(validate_actions(actions, self.single_action_space, self.num_envs))
        self._in_flight = True

    def recv(self) -> StepResult:
        """The result of the step :meth:`send` started."""
        if not self._in_flight:
            raise RuntimeError(f"{self!r}: recv() without send()")
        self._in_flight = False
        observations, rewards, terminated, truncated, infos = self._recv()
        return StepResult(
            _flatten_observations(self._raw_observation_space, observations, self.num_envs),
            np.asarray(rewards, dtype=np.float32),
            np.asarray(terminated, dtype=bool),
            np.asarray(truncated, dtype=bool),
            infos,
        )

    @abc.abstractmethod
    def _send(self, actions: np.ndarray) -> None:
        """Starts a step with validated actions."""

    @abc.abstractmethod
    def _recv(self) -> tuple:
        """The started step's ``(observations, rewards, terminated, truncated, infos)``."""

    def close(self) -> None:
        """Closes the environments (idempotent)."""
        if not self._closed:
            self._closed = True
            self._env.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")


class EnvpoolVectorEnv(VectorEnv):
    """envpool, synchronous (``batch_size == num_envs``); env ``i`` is seeded ``seed + i``."""

    backend = "envpool"

    def __init__(self, env_id: str, num_envs: int, seed: int) -> None:
        import envpool

        with warnings.catch_warnings():
            # envpool builds its spaces anew on every access, float32 Boxes from float64
            # bounds, and gymnasium warns each time; the base class reads them once.
            warnings.filterwarnings("ignore", message=r".*precision lowered by casting")
            env = envpool.make(env_id, env_type="gymnasium", num_envs=num_envs, seed=seed)
            super().__init__(env, env_id, num_envs)

    def _reset(self, seed: int | None) -> Any:
        # envpool seeds at construction; later resets continue each env's generator.
        observations, _ = self._env.reset()
        return observations

    def _send(self, actions: np.ndarray) -> None:
        self._env.send(actions)

    def _recv(self) -> tuple:
        return self._env.recv()


class GymnasiumVectorEnv(VectorEnv):
    """gymnasium's ``SyncVectorEnv`` in next-step autoreset mode; env ``i`` is seeded
    ``seed + i`` at the first reset (later resets continue each env's generator)."""

    backend = "gymnasium"

    def __init__(self, env_id: str, num_envs: int, seed: int, make_env: EnvFactory) -> None:
        env = gym.vector.SyncVectorEnv(
            [make_env(env_id, seed + i) for i in range(num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
        )
        super().__init__(env, env_id, num_envs)
        self._first_reset_seeds: list[int] | None = [seed + i for i in range(num_envs)]

    def _reset(self, seed: int | None) -> Any:
        seeds = self._first_reset_seeds
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)]
        with self._observations_checked("reset"):
            observations, _ = self._env.reset(seed=seeds)
        self._first_reset_seeds = None
        return observations

    def _send(self, actions: np.ndarray) -> None:
        self._actions = actions

    def _recv(self) -> tuple:
        with self._observations_checked("step"):
            return self._env.step(self._actions)

    @contextlib.contextmanager
    def _observations_checked(self, call: str) -> Iterator[None]:
        """gymnasium batches the envs' observations into its space's arrays: one that does not
        fit (another shape, strings) is named with the env and its space, not numpy's words."""
        try:
            yield
        except (ValueError, TypeError) as error:
            batching = any(f"gymnasium{os.sep}vector{os.sep}utils" in frame.filename
                           for frame in traceback.extract_tb(error.__traceback__))
            if not batching:  # the env's own error, as it is
                raise
            raise ValueError(f"{self.env_id}: an observation from {call}() does not fit the "
                             f"observation space {self._env.single_observation_space} "
                             f"({first_line(error)})") from error


def gymnasium_env_factory(env_id: str, seed: int) -> Callable[[], gym.Env]:
    """A thunk making one gymnasium env for a vector env: make, FlattenObservation
    (Dict/Tuple observations only), RecordEpisodeStatistics, with the action space seeded (the
    env itself is seeded by the vector env's first reset). Deliberately no reward
    normalisation and no ClipAction: minerva normalises rewards itself, identically for the
    envpool and gymnasium backends, and its policy maps actions into the action bounds."""

    def thunk() -> gym.Env:
        env = gym.wrappers.RecordEpisodeStatistics(flatten_observations(gym.make(env_id)))
        env.action_space.seed(seed)
        return env

    return thunk


def make_vector_env(
    env_id: str,
    num_envs: int,
    seed: int,
    backend: str | None = None,
    make_env: EnvFactory | None = None,
) -> VectorEnv:
    """Makes ``num_envs`` copies of ``env_id`` on ``backend``.

    Args:
        env_id: an envpool or gymnasium id (resolve user input with
            :func:`~minerva.env_ids.resolve_env_id` first).
        num_envs: environments stepped together (>= 1).
        seed: env ``i`` gets ``seed + i`` on both backends.
        backend: ``"envpool"``, ``"gymnasium"`` or None for :func:`default_backend`.
        make_env: gymnasium backend only: ``make_env(env_id, seed) -> thunk`` for one env
            (default: :func:`gymnasium_env_factory`). envpool makes its own environments.
    """
    if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    num_envs, seed = int(num_envs), int(seed)
    backend = default_backend(env_id) if backend is None else backend
    if make_env is None or backend != "gymnasium":  # (a factory of one's own makes any id)
        check_backend(env_id, backend)
    if backend == "envpool":
        return EnvpoolVectorEnv(env_id, num_envs, seed)
    return GymnasiumVectorEnv(env_id, num_envs, seed, make_env or gymnasium_env_factory)


def flatten_observations(env: gym.Env) -> gym.Env:
    """``env`` with Dict/Tuple observations flattened into one Box (as the vector envs
    flatten them); ``env`` itself when they are a Box already."""
    if isinstance(env.observation_space, (spaces.Dict, spaces.Tuple)):
        return gym.wrappers.FlattenObservation(env)
    return env
