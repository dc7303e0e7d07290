"""Environment ids: which exist, on which backend (envpool or gymnasium), with which spaces.

Everything here reads registries and specs; nothing makes a vector env (:mod:`minerva.envs`).
"""

from __future__ import annotations

import difflib
import functools
import logging
import warnings
from typing import Any

import gymnasium as gym
from gymnasium import spaces

BACKENDS = ("envpool", "gymnasium")


@functools.cache
def envpool_env_ids() -> frozenset[str]:
    """Ids envpool can make; empty when envpool is not installed (it is optional)."""
    try:
        import envpool
    except ImportError:
        return frozenset()
    return frozenset(envpool.list_all_envs())


def available_backends(env_id: str) -> tuple[str, ...]:
    """Backends that know ``env_id``, in order of preference."""
    # gym.registry is read each time: importing a plugin (e.g. shimmy) can add ids.
    known = {"envpool": envpool_env_ids(), "gymnasium": gym.registry}
    return tuple(backend for backend in BACKENDS if env_id in known[backend])


def check_backend(env_id: str, backend: str) -> None:
    """Raises ValueError unless ``backend`` (envpool or gymnasium) can make ``env_id``, naming
    the backends that can."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}")
    if backend not in available_backends(env_id):
        reason = ("envpool is not installed" if backend == "envpool" and not envpool_env_ids()
                  else f"{backend} has no such id")
        raise ValueError(f"environment {env_id!r} is not available on backend {backend!r} "
                         f"({reason}); available backends for it: "
                         f"{list(available_backends(env_id))}")


def default_backend(env_id: str) -> str:
    """``"envpool"`` when envpool is installed and has ``env_id``, else ``"gymnasium"``."""
    return "envpool" if env_id in envpool_env_ids() else "gymnasium"


@functools.cache
def env_spaces(env_id: str) -> tuple[spaces.Space, spaces.Space]:
    """The observation and action spaces of ``env_id``, from envpool's spec when it has the
    id (no env is made), else from one gymnasium env made and closed at once."""
    if env_id in envpool_env_ids():
        import envpool

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*precision lowered by casting")
            spec = envpool.make_spec(env_id)
            return spec.observation_space, spec.action_space
    env = gym.make(env_id)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _is_box_tree(space: spaces.Space) -> bool:
    """A Box, or Dict/Tuple spaces nesting only Boxes."""
    if isinstance(space, spaces.Dict):
        return all(_is_box_tree(s) for s in space.values())
    if isinstance(space, spaces.Tuple):
        return all(_is_box_tree(s) for s in space)
    return isinstance(space, spaces.Box)


def supported_observation_box(env_id: str, observation_space: spaces.Space,
                              action_space: spaces.Space) -> spaces.Box:
    """The Box observations are stored as (Dict/Tuple of Boxes flattened).

    Raises:
        ValueError: naming ``env_id`` and its unsupported observation or action space.
    """
    # Box leaves only: flatten_space would one-hot encode Discrete ones, which
    # _flatten_observations does not.
    if not _is_box_tree(observation_space):
        raise ValueError(f"{env_id}: unsupported observation space {observation_space} "
                         "(minerva supports Box, and Dict/Tuple of Box which it flattens)")
    if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
        raise ValueError(f"{env_id}: unsupported action space {action_space} "
                         "(minerva supports Box and Discrete)")
    box = (observation_space if isinstance(observation_space, spaces.Box)
           else spaces.flatten_space(observation_space))
    if box.shape == () or 0 in box.shape:
        raise ValueError(f"{env_id}: unsupported observation space {observation_space}: an "
                         "observation needs at least one value along one axis (a scalar one: "
                         "wrap the env in gymnasium.wrappers.ReshapeObservation(env, (1,)))")
    return box


def resolve_env_id(env_id: str) -> str:
    """Checks ``env_id`` against gymnasium's registry and envpool's ids; returns the id to make.

    ``dm_control/<domain>/<task>`` maps to shimmy's ``dm_control/<domain>-<task>-v0``.

    Raises:
        ValueError: for an unknown id, naming it and suggesting close matches.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"environment id must be a non-empty string, got {env_id!r}")
    module, colon, _ = env_id.partition(":")
    if colon:  # gym.make would import it (to run its registrations): code an id must not pick
        raise ValueError(f"environment id {env_id!r} names a module to import ({module!r}); "
                         "minerva makes registered ids only, and imports no module an id names")
    resolved = env_id
    parts = env_id.split("/")
    if parts[0] == "dm_control":
        if len(parts) == 3:
            resolved = f"dm_control/{parts[1]}-{parts[2]}-v0"
        try:
            import shimmy  # noqa: F401  (importing it registers the dm_control ids)
        except ImportError as error:
            named = f" (gymnasium id {resolved!r})" if resolved != env_id else ""
            raise ValueError(
                f"environment id {env_id!r}{named} needs dm_control through shimmy: "
                "pip install 'minerva[dmc]'"
            ) from error
        quiet_dm_control()
    if available_backends(resolved):
        return resolved
    known = sorted(envpool_env_ids() | set(gym.registry))
    matches = difflib.get_close_matches(resolved, known, n=3)
    message = f"unknown environment id {env_id!r}"
    if resolved != env_id:
        message += f" (gymnasium id {resolved!r})"
    if not envpool_env_ids():  # its ids (Atari's, Pong-v5; its own CheetahRun-v1) are missing
        message += " (envpool, which has ids of its own, is not installed)"
    if matches:
        quoted = [repr(match) for match in matches]
        suggestion = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        message += f"; did you mean {suggestion}?"
    raise ValueError(message)


@functools.cache
def quiet_dm_control() -> None:
    """dm_control's models set a compiler attribute MuJoCo deprecates, and absl logs a
    warning about it for every env made: dozens of lines before a run starts."""
    logging.getLogger("absl").addFilter(
        lambda record: "'settotalmass' is deprecated" not in record.getMessage())


def atari_config(env_id: str) -> Any | None:
    """envpool's configuration of an Atari id (``Pong-v5``: frame skip, stacking, image size,
    ...); None for any other id."""
    if env_id not in envpool_env_ids():
        return None
    import envpool

    config = envpool.make_spec(env_id).config
    return config if hasattr(config, "stack_num") and hasattr(config, "gray_scale") else None
