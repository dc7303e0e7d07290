"""Checkpoint files: written atomically, read without running any code.

A checkpoint (``<algo>_last.pt``, ``<algo>_best.pt``: ``vmpo_last.pt``, ``ppo_best.pt``) is a
``torch.save`` of a dict of tensors and plain Python values (numbers, strings, lists, tuples,
dicts, None): the format version, the run's configuration, the networks' weights and the
observation normaliser's statistics, the algorithm's state (the optimiser's, and V-MPO's
duals), the reward scaler's return statistics, the step and iteration counters, the best
evaluation return, the last 100 training episodes' returns and the random number generators'
states (Python's, numpy's, torch's, CUDA's). It is read with
``torch.load(weights_only=True)``: unpickling refuses every object other than those, so a
crafted file cannot run code; and its env id must be one minerva makes (a registered one),
so a crafted id cannot have gymnasium import a module either.

Formats 1 and 2 (earlier minerva) stored numpy arrays; they are read with numpy's array
reconstruction allowed as well (it builds arrays, nothing else) and upgraded.
"""

from __future__ import annotations

import errno
import io
import math
import numbers
import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from minerva.errors import first_line
from minerva.files import write_file

FORMAT = 3  # 3: no numpy objects (weights_only); 2: log-space multipliers; 1: softplus ones
_FORMATS_READ = (f"this minerva reads format {FORMAT} only: resume it with the minerva that "
                 "wrote it, or train anew")


class CheckpointError(ValueError):
    """A file that is not a readable minerva checkpoint, or one that does not fit the run."""


def save(state: dict, path: str | Path) -> None:
    """Writes ``state`` to a temporary file beside ``path``, fsyncs it and renames it over
    ``path``: a crash or a kill mid-write leaves the previous checkpoint intact. Temporary
    files that killed writes left behind are removed first.

    Raises:
        OSError: naming the file and the cause (e.g. no space left on device).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    for stale in path.parent.glob(f"{prefix}*"):
        if stale.is_symlink() or stale.is_file():  # (a folder of that name is not ours)
            stale.unlink(missing_ok=True)
    # serialised in memory first: torch's zip writer reports a failed write as "unexpected
    # pos", while a plain write raises the OSError that says why
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        write_file(path, buffer.getbuffer(), durable=True)
    except OSError as error:
        code = error.errno or errno.EIO
        reason = _DISK_FULL.get(code) or error.strerror or os.strerror(code)
        raise OSError(code, f"cannot write the checkpoint {path}: {reason}") from error


# what an errno of a failed write means for the user
_DISK_FULL = {errno.ENOSPC: "the disk is full (No space left on device)",
              errno.EDQUOT: "the disk quota is exceeded (Disk quota exceeded)"}


# what a checkpoint holds, and what each algorithm's update adds (a checkpoint without an
# algo is V-MPO's)
REQUIRED_KEYS = ("format", "config", "env_id", "agent", "optimizer", "reward_scaler",
                 "global_step", "iteration", "best_return", "rng")
ALGORITHM_KEYS = {"vmpo": ("duals",), "ppo": ()}


def load(path: str | Path) -> dict:
    """Reads a minerva checkpoint safely (tensors and plain values only).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: naming the file and what it is instead (a folder, empty, truncated
            or corrupt, not a torch file, a torch file holding other objects, another
            format: those before 3 are refused), or the value that is wrong (an env id
            minerva does not make, non-finite weights, ...).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (such as "
                              "vmpo_last.pt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a torch checkpoint (a text file, or truncated?)")
    with zipfile.ZipFile(path) as archive:  # (torch.save stores every entry uncompressed)
        compressed = [entry.filename for entry in archive.infolist()
                      if entry.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise CheckpointError(f"{path} holds compressed entries ({compressed[0]}, ...), which "
                              "torch.save never writes: it was not loaded, as a small "
                              "compressed file can unpack to more memory than the machine has")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        names: list[str] = []
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001  (the refusal is what matters)
            pass
        if names and all(name.startswith("numpy") for name in names):
            raise CheckpointError(f"{path} is a checkpoint of format 1 or 2 (it holds numpy "
                                  f"objects); {_FORMATS_READ}") from None
        unsafe = f" ({', '.join(names)})" if names else ""
        raise CheckpointError(
            f"{path} holds Python objects a minerva checkpoint never holds{unsafe}; it was "
            "not loaded, as unpickling them could run code") from error
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path} is corrupt or truncated ({first_line(error)})") from error
    if not isinstance(state, dict) or "config" not in state or "agent" not in state:
        raise CheckpointError(f"{path} is a torch file but not a minerva checkpoint")
    version = state.get("format")
    if version != FORMAT:
        raise CheckpointError(f"{path} is a minerva checkpoint of format {version!r}; "
                              f"{_FORMATS_READ}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} is an incomplete minerva checkpoint (it lacks a config "
                              "dict)")
    algo = state["config"].get("algo", "vmpo")
    if algo not in ALGORITHM_KEYS:
        raise CheckpointError(f"{path} is a checkpoint of an algorithm this minerva does not "
                              f"know: {algo!r}")
    missing = [key for key in (*REQUIRED_KEYS, *ALGORITHM_KEYS[algo]) if key not in state]
    if missing:
        raise CheckpointError(f"{path} is an incomplete minerva checkpoint (it lacks "
                              f"{', '.join(missing)})")
    _check_values(state, path)
    return state


def _check_values(state: dict, path: Path) -> None:
    """Refuses values nothing should act on: an env id that is not one minerva makes (a
    ``module:Env`` id would have gymnasium import that module), an unknown backend, counters
    that are not counts, non-finite tensors (weights, normaliser statistics, optimiser state).

    Raises:
        CheckpointError: naming the file, the value and what is wrong with it.
    """
    from minerva.env_ids import BACKENDS, resolve_env_id

    env_id = state["env_id"]
    try:  # (checks the registries only: it imports nothing an id names)
        resolve_env_id(env_id)
    except ValueError as error:
        raise CheckpointError(f"{path} has an env_id minerva does not make: {error}") from None
    configured = state["config"].get("env_id", env_id)
    try:
        matches = resolve_env_id(configured) == env_id
    except ValueError as error:
        raise CheckpointError(f"{path} has a config env_id minerva does not make: "
                              f"{error}") from None
    if not matches:
        raise CheckpointError(f"{path} is a damaged minerva checkpoint: its env_id {env_id!r} "
                              f"is not its config's {configured!r}")
    if state.get("backend", BACKENDS[0]) not in BACKENDS:
        raise CheckpointError(f"{path} has an unknown backend {state['backend']!r} (minerva's "
                              f"are {' and '.join(BACKENDS)})")
    following = state.get("next_evaluation_step")
    if following is not None and not (isinstance(following, numbers.Integral)
                                      and not isinstance(following, bool) and following >= 0):
        raise CheckpointError(f"{path} is a damaged minerva checkpoint: next_evaluation_step "
                              f"must be a non-negative integer, got {following!r}")
    for name in ("global_step", "iteration"):
        value = state[name]
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"{path} is a damaged minerva checkpoint: {name} must be a "
                                  f"non-negative integer, got {value!r}")
    def damaged(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"{path} is a damaged minerva checkpoint: {key} {why}")

    best = state["best_return"]
    if not _is_number(best) or math.isnan(best) or best == math.inf:
        raise damaged("best_return", f"must be a finite number or -inf, got {best!r}")
    recent = state.get("recent_returns", [])
    if not isinstance(recent, list) or not all(
            _is_number(value) and math.isfinite(value) for value in recent):
        raise damaged("recent_returns", "must be a list of finite numbers")
    for group in state["optimizer"].get("param_groups", []):
        lr = group.get("lr") if isinstance(group, dict) else None
        # (>= 0: the linear schedule ends a run at 0)
        if not _is_number(lr) or not 0 <= lr < math.inf:
            raise damaged("optimizer learning rate", f"must be a finite number >= 0, got {lr!r}")
    # the normalisers' variances and counts
    for key, tensor in _tensors({"agent": state["agent"], "reward_scaler": state["reward_scaler"]}):
        if key.endswith((".var", ".count")) and (tensor < 0).any():
            raise damaged(key, "must be >= 0 (a variance or a count)")
    from minerva.config import DUAL_RANGE

    log_low, log_high = math.log(DUAL_RANGE[0]), math.log(DUAL_RANGE[1])
    duals = state.get("duals", {})
    for name in ("log_eta", "log_alpha"):  # the log parameterisation's range
        value = duals.get(name) if isinstance(duals, dict) else None
        if isinstance(value, torch.Tensor) and value.is_floating_point() and (
                (value < log_low - 1e-6) | (value > log_high + 1e-6)).any():
            raise damaged(f"duals.{name}", f"must be in [{log_low:.3g}, {log_high:.3g}] "
                                            f"(multipliers in [{DUAL_RANGE[0]:g}, "
                                            f"{DUAL_RANGE[1]:g}])")
    for key, tensor in _tensors(state):
        if not tensor.is_floating_point():
            continue
        # the action space's bounds, kept with the weights, are infinite on an unbounded side
        bad = tensor.isnan() if key.rsplit(".", 1)[-1] in ("low", "high") else ~tensor.isfinite()
        if bad.any():
            kind = "NaN" if tensor.isnan().any() else "infinity"
            raise CheckpointError(f"{path} holds non-finite values: {key} has {kind} (the run "
                                  "that wrote it diverged, or the file is damaged)")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _tensors(value, key: str = ""):
    """``(dotted key, tensor)`` for every tensor in nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _tensors(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{key}.{index}")


def load_weights(module: torch.nn.Module, weights: dict, what: str) -> None:
    """``module.load_state_dict(weights)``, where weights that do not fit are a
    :class:`CheckpointError` naming ``what`` they do not fit and the first key that does not
    (torch's message lists each on a line of its own, after a heading)."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"the checkpoint's weights for {what} are a "
                              f"{type(weights).__name__}, not a dict of tensors")
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines()]
        problems = [line for line in lines[1:] if line] or lines[:1]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"the checkpoint's weights do not fit {what}: "
                              f"{problems[0]}{more}") from None


def saved_config(state: dict, path: str | Path) -> dict:
    """The checkpoint's configuration as a full set of options: those newer than its format
    at their defaults (or at :data:`~minerva.config.LEGACY_DEFAULTS`, what minerva did
    before the option existed), the whole checked by :meth:`TrainConfig.validate` but for
    the device, which is the caller's to check or replace (a run trained on a GPU resumes or
    is evaluated on a CPU).

    Raises:
        CheckpointError: for options this minerva does not know, or invalid values.
    """
    from minerva.config import LEGACY_DEFAULTS, OPTION_DEFAULTS, REMOVED_OPTIONS, TrainConfig

    saved = dict(state["config"])
    for name, (same, why) in REMOVED_OPTIONS.items():
        # gone, and at its value minerva's behaviour now; another value is refused
        if name in saved and saved.pop(name) != same is not None:
            raise CheckpointError(f"{path} was trained with {name} = {state['config'][name]!r}, "
                                  f"which this minerva no longer has ({why})")
    unknown = set(saved) - set(OPTION_DEFAULTS)
    if unknown:
        raise CheckpointError(f"{path} has options this minerva does not know: "
                              f"{sorted(unknown)}")
    config = {**OPTION_DEFAULTS, **LEGACY_DEFAULTS, **saved}
    try:  # but the device: where it runs now is the caller's choice (a GPU run on a CPU)
        TrainConfig(**{**config, "device": "cpu"}).validate()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} has an invalid config: {error}") from None
    return config


def rng_state() -> dict:
    """Python's, numpy's and torch's (CPU) random states as tensors and plain values."""
    python_version, python_state, gauss = random.getstate()
    _, key, position, has_gauss, cached = np.random.get_state()
    return {"python": [python_version, list(python_state), gauss],
            "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(position),
                      "has_gauss": int(has_gauss), "gauss": float(cached)},
            "torch": torch.get_rng_state()}


def set_rng_state(rng: dict) -> None:
    """Restores what :func:`rng_state` returned."""
    python_version, python_state, gauss = rng["python"]
    random.setstate((python_version, tuple(python_state), gauss))
    numpy_state = rng["numpy"]
    np.random.set_state(("MT19937", numpy_state["key"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(rng["torch"])
