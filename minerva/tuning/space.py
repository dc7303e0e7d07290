"""Search spaces and reference returns: ``tuning.toml`` (beside the presets) or a file of the
user's, each range checked as it is read."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from minerva.config import OPTION_DEFAULTS, TrainConfig

TUNING_FILE = Path(__file__).resolve().parent.parent / "tuning.toml"
# options each trial sets itself: searching them would break the comparison between trials
SET_BY_THE_STUDY = ("algo", "env_id", "seed", "total_steps", "eval_every", "out_dir",
                    "overwrite", "progress", "torch_threads", "target_return", "resume")


class UsageError(ValueError):
    """A search space, reference or flag that no trial could run with (one line, exit 2)."""


@dataclasses.dataclass(frozen=True)
class Range:
    """One option's range: ``low``..``high`` (``log``: sampled on a log scale; ``step``: a
    grid) or ``choices``."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        """The trial's value of this option (as TrainConfig takes it)."""
        if self.choices is not None:
            encoded = [_encode_choice(c) for c in self.choices]
            return decode_param(self.name, trial.suggest_categorical(self.name, encoded))
        if isinstance(self.low, int):
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1,
                                     log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> tuple:
        """The values every trial's options lie between (each choice, or both ends)."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def param(self, value: Any) -> Any | None:
        """``value`` as this range's Optuna parameter, or None where the range cannot hold it."""
        if self.choices is not None:
            return _encode_choice(value) if value in self.choices else None
        return value if self.low <= value <= self.high else None


def _encode_choice(value: Any) -> Any:
    """Optuna's categorical values are scalars: a list (layer sizes) goes in as "256,256"."""
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def decode_param(name: str, value: Any) -> Any:
    """A trial's parameter as option ``name`` takes it (layer sizes back to a tuple)."""
    if typing.get_origin(typing.get_type_hints(TrainConfig)[name]) is tuple:
        return tuple(int(v) for v in str(value).split(",") if v)
    return value


def _parse_range(where: str, name: str, spec: Any) -> Range:
    def bad(why: str) -> typing.NoReturn:
        raise UsageError(f"{where}: {name}: {why}")

    if name not in OPTION_DEFAULTS:
        bad("unknown option (the options are TrainConfig's: python -m minerva.train --help)")
    if name in SET_BY_THE_STUDY:
        bad("is set by the study for every trial and cannot be searched (fix it with the "
            "tune command's own flag or after --)")
    if not isinstance(spec, dict):
        bad(f"needs a table such as {{ low = 1, high = 2 }} or {{ choices = [...] }}, got "
            f"{spec!r}")
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        bad(f"unknown keys {sorted(unknown)} (a range takes low, high, log, step or choices)")
    kind = typing.get_type_hints(TrainConfig)[name]
    if "choices" in spec:
        if set(spec) != {"choices"}:
            bad("choices cannot be combined with low, high, log or step")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            bad("choices must be a non-empty list")
        values = tuple(tuple(c) if isinstance(c, list) else c for c in choices)
        if len(set(values)) != len(values):
            bad(f"choices repeat a value: {choices}")
        if kind is float:  # TOML's 1 for a float option
            values = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                           for v in values)
        return Range(name, choices=values)
    if kind not in (int, float):
        bad("is not a number: give its choices = [...]")
    if "low" not in spec or "high" not in spec:
        bad("needs both low and high (or choices)")
    low, high, step, log = spec["low"], spec.get("high"), spec.get("step"), spec.get("log", False)
    for key, value in (("low", low), ("high", high), ("step", step)):
        if value is None:
            continue
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            bad(f"{key} must be a finite number, got {value!r}")
        if kind is int and not isinstance(value, int):
            bad(f"{key} must be an integer (an integer option), got {value!r}")
    if not isinstance(log, bool):
        bad(f"log must be true or false, got {log!r}")
    if kind is float:
        low, high = float(low), float(high)
        step = None if step is None else float(step)
    if not low < high:
        bad(f"needs low < high, got low = {low!r}, high = {high!r}")
    if log and low <= 0:
        bad(f"a log range needs low > 0, got {low!r}")
    if step is not None and (step <= 0 or log):
        bad("step must be > 0 and cannot be combined with log")
    return Range(name, low, high, log, step)


def load_tuning_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not valid TOML: {error}") from None


def load_space(path: Path, name: str) -> dict[str, Range]:
    """The space ``[space.<name>]`` of the tuning file at ``path``, every range checked."""
    spaces = load_tuning_file(path).get("space", {})
    if name not in spaces:
        raise UsageError(f"{path.name}: no space [space.{name}] (it has: "
                         f"{', '.join(spaces) or 'none'})")
    where = f"{path.name} [space.{name}]"
    if not spaces[name]:
        raise UsageError(f"{where}: is empty: nothing to search")
    return {option: _parse_range(where, option, spec) for option, spec in spaces[name].items()}


@dataclasses.dataclass(frozen=True)
class Reference:
    """Scores returns as ``(return - floor) / (reference - floor)``."""

    reference: float
    floor: float = 0.0

    def score(self, value: float) -> float:
        return (value - self.floor) / (self.reference - self.floor)


def _parse_reference(env_id: str, value: Any, where: str) -> Reference:
    pair = value if isinstance(value, list) else [0.0, value]
    if (len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v) for v in pair)):
        raise UsageError(f"{where}: {env_id}: a reference is a return or [floor, "
                         f"return], got {value!r}")
    floor, reference = float(pair[0]), float(pair[1])
    if reference == floor:
        raise UsageError(f"{where}: {env_id}: the reference return must differ from "
                         f"the floor ({floor:g})")
    return Reference(reference, floor)


def references(path: Path, flags: Sequence[str]) -> dict[str, Reference]:
    """The tuning file's references with ``ENV=RETURN`` / ``ENV=FLOOR:RETURN`` flags on top."""
    table = load_tuning_file(path).get("references", {})
    found = {env: _parse_reference(env, value, f"{path.name} [references]")
             for env, value in table.items()}
    for flag in flags:
        env_id, sep, text = flag.rpartition("=")
        try:
            numbers = [float(part) for part in text.split(":")]
        except ValueError:
            numbers = []
        if not sep or not env_id or len(numbers) not in (1, 2):
            raise UsageError(f"--reference: expected ENV=RETURN or ENV=FLOOR:RETURN, "
                             f"got {flag!r}")
        found[env_id] = _parse_reference(env_id, numbers if len(numbers) == 2 else numbers[0],
                                         "--reference")
    return found
