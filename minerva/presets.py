"""Training presets, kept as data in ``presets.toml`` beside this file: one configuration for
every continuous-control task (any env with ``Box`` actions), one for every env with image
observations (Atari), and per-environment tables on top of them."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import gymnasium as gym

from minerva import envs
from minerva.config import OPTION_DEFAULTS
from minerva.networks import is_image_space

PRESETS_FILE = Path(__file__).with_name("presets.toml")
CONTINUOUS_CONTROL = "continuous-control"  # the table every Box-action env starts from
IMAGES = "images"  # the table every env with image observations starts from
BASE_TABLES = (CONTINUOUS_CONTROL, IMAGES)


@cache
def _tables() -> dict[str, dict[str, Any]]:
    """Every table of the file, checked against TrainConfig's fields."""
    presets = tomllib.loads(PRESETS_FILE.read_text())
    for env_id, options in presets.items():
        unknown = set(options) - set(OPTION_DEFAULTS)
        if unknown:
            raise ValueError(f"{PRESETS_FILE.name} [{env_id}]: unknown options {sorted(unknown)}")
        for key in ("policy_layer_sizes", "value_layer_sizes"):
            if key in options:
                options[key] = tuple(options[key])
    return presets


def all_presets() -> dict[str, dict[str, Any]]:
    """env id -> that env's own option overrides."""
    return {name: table for name, table in _tables().items() if name not in BASE_TABLES}


def continuous_control() -> dict[str, Any]:
    """The configuration every continuous-control task trains with."""
    return dict(_tables()[CONTINUOUS_CONTROL])


def images() -> dict[str, Any]:
    """The configuration every env with image observations trains with."""
    return dict(_tables()[IMAGES])


def preset(env_id: str) -> dict[str, Any]:
    """The overrides for ``env_id`` (a resolved id): the continuous-control configuration
    when its actions are continuous (``Box``), the image configuration when its observations
    are images (:func:`~minerva.networks.is_image_space`), then the env's own table ({} for
    a discrete env with vector observations and no table)."""
    observation_space, action_space = envs.env_spaces(env_id)
    continuous = isinstance(action_space, gym.spaces.Box)
    return {**(continuous_control() if continuous else {}),
            **(images() if is_image_space(observation_space) else {}),
            **all_presets().get(env_id, {})}
