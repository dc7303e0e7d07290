"""Per-environment presets, kept as data in ``presets.toml`` beside this file."""

from __future__ import annotations

import dataclasses
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from minerva.config import TrainConfig

PRESETS_FILE = Path(__file__).with_name("presets.toml")


@cache
def all_presets() -> dict[str, dict[str, Any]]:
    """env id -> option overrides, checked against TrainConfig's fields."""
    presets = tomllib.loads(PRESETS_FILE.read_text())
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for env_id, options in presets.items():
        unknown = set(options) - names
        if unknown:
            raise ValueError(f"{PRESETS_FILE.name} [{env_id}]: unknown options {sorted(unknown)}")
        for key in ("policy_layer_sizes", "value_layer_sizes"):
            if key in options:
                options[key] = tuple(options[key])
    return presets


def preset(env_id: str) -> dict[str, Any]:
    """The overrides for ``env_id`` ({} when it has no preset)."""
    return dict(all_presets().get(env_id, {}))
