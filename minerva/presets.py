"""Training presets, kept as data in ``presets.toml`` beside this file: one configuration for
every continuous-control task (any env with ``Box`` actions), and per-environment tables on
top of it."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import gymnasium as gym

from minerva import envs
from minerva.config import OPTION_DEFAULTS

PRESETS_FILE = Path(__file__).with_name("presets.toml")
CONTINUOUS_CONTROL = "continuous-control"  # the table every Box-action env starts from


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
    return {name: table for name, table in _tables().items() if name != CONTINUOUS_CONTROL}


def continuous_control() -> dict[str, Any]:
    """The configuration every continuous-control task trains with."""
    return dict(_tables()[CONTINUOUS_CONTROL])


def preset(env_id: str) -> dict[str, Any]:
    """The overrides for ``env_id`` (a resolved id): the continuous-control configuration
    when its actions are continuous (``Box``), then the env's own table ({} for a discrete
    env without one)."""
    continuous = isinstance(envs.action_space(env_id), gym.spaces.Box)
    return {**(continuous_control() if continuous else {}), **all_presets().get(env_id, {})}
