"""Training presets, kept as data in ``presets.toml`` beside this file: per algorithm, its own
defaults, one configuration for every continuous-control task (any env with ``Box``
actions), one for every env with image observations (Atari) and per-env tables; and per env,
its budget and evaluation cadence, shared by every algorithm."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import gymnasium as gym

from minerva import envs
from minerva.config import ALGORITHMS, OPTION_DEFAULTS
from minerva.encoders import is_image_space

PRESETS_FILE = Path(__file__).with_name("presets.toml")
CONTINUOUS_CONTROL = "continuous-control"  # the table every Box-action env starts from
IMAGES = "images"  # the table every env with image observations starts from
BASE_TABLES = (CONTINUOUS_CONTROL, IMAGES)


def _checked(name: str, options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(OPTION_DEFAULTS)
    if unknown:
        raise ValueError(f"{PRESETS_FILE.name} [{name}]: unknown options {sorted(unknown)}")
    for key in ("policy_layer_sizes", "value_layer_sizes"):
        if key in options:
            options[key] = tuple(options[key])
    return options


@cache
def _tables() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """(env id -> the env's table, algo -> {"": its own keys, table name -> table}), every
    table checked against TrainConfig's fields."""
    presets = tomllib.loads(PRESETS_FILE.read_text())
    algorithms = {}
    for algo in ALGORITHMS:
        tables = presets.pop(algo, {})
        own = {k: v for k, v in tables.items() if not isinstance(v, dict)}
        algorithms[algo] = {"": _checked(algo, own), **{
            name: _checked(f"{algo}.{name}", table)
            for name, table in tables.items() if isinstance(table, dict)}}
    return {env_id: _checked(env_id, table) for env_id, table in presets.items()}, algorithms


def all_presets() -> dict[str, dict[str, Any]]:
    """env id -> that env's own option overrides (its run, for every algorithm)."""
    return dict(_tables()[0])


def algorithm_table(algo: str, name: str = "") -> dict[str, Any]:
    """An algorithm's table: its own keys (``name`` empty), ``continuous-control``,
    ``images``, or an env id's ({} where it has none)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"algo must be one of {', '.join(ALGORITHMS)}, got {algo!r}")
    return dict(_tables()[1][algo].get(name, {}))


def continuous_control(algo: str = "vmpo") -> dict[str, Any]:
    """The configuration every continuous-control task trains with (``algo``'s keys under
    its continuous-control table)."""
    return {**algorithm_table(algo), **algorithm_table(algo, CONTINUOUS_CONTROL)}


def images(algo: str = "vmpo") -> dict[str, Any]:
    """The configuration every env with image observations trains with."""
    return {**algorithm_table(algo), **algorithm_table(algo, IMAGES)}


def preset(env_id: str, algo: str = "vmpo") -> dict[str, Any]:
    """The overrides for ``env_id`` (a resolved id) trained with ``algo``: the algorithm's own
    keys, its continuous-control table when the env's actions are continuous (``Box``), its
    image table when the observations are images (:func:`~minerva.encoders.is_image_space`),
    the env's own table, then the algorithm's table of the env."""
    observation_space, action_space = envs.env_spaces(env_id)
    continuous = isinstance(action_space, gym.spaces.Box)
    return {**algorithm_table(algo),
            **(algorithm_table(algo, CONTINUOUS_CONTROL) if continuous else {}),
            **(algorithm_table(algo, IMAGES) if is_image_space(observation_space) else {}),
            **all_presets().get(env_id, {}),
            **algorithm_table(algo, env_id)}
