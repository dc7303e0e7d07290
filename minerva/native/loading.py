"""Loads minerva's native code: the op library ``_C.so`` and the ``_rollout_storage`` module,
and, into torch built with CUDA, the CUDA kernels ``_C_cuda.so``.

When either is missing or fails to load, minerva falls back to the pure-Python references in
:mod:`minerva.reference` with a warning; ``MINERVA_REQUIRE_NATIVE=1`` turns that into an
ImportError instead (CI sets it, so a broken build cannot pass silently).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import warnings
from pathlib import Path

import torch

REQUIRE_NATIVE = os.environ.get("MINERVA_REQUIRE_NATIVE", "") not in ("", "0")

_errors: list[str] = []


def _fallback(what: str, error: str) -> None:
    message = f"minerva: native {what} unavailable ({error}); using the pure-Python reference"
    if REQUIRE_NATIVE:
        raise ImportError(message + " [MINERVA_REQUIRE_NATIVE is set]")
    _errors.append(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _import_storage():
    try:
        return importlib.import_module("minerva._rollout_storage")
    except ImportError as error:
        _fallback("rollout storage", str(error))
        return None


_storage_module = _import_storage()


def _library_dirs() -> list[Path]:
    # Every folder of the package (an installed one behind a source checkout, see
    # minerva/__init__.py), and in an editable install the folder of the compiled storage
    # module, where the build put _C.so too.
    import minerva

    dirs = [Path(path) for path in minerva.__path__]
    if _storage_module is not None:
        dirs.append(Path(_storage_module.__file__).parent)
    return dirs


def _find_library(name: str) -> Path | None:
    candidates = [d / name for d in _library_dirs() if (d / name).exists()]
    return candidates[0] if candidates else None


def _load_library(library: Path) -> str | None:
    """Loads an op library into torch; returns why it failed, or None."""
    try:
        torch.ops.load_library(str(library))
    except OSError as error:
        # torch's message hides the cause; ctypes names the missing symbol or library.
        try:
            ctypes.CDLL(str(library))
            return str(error)
        except OSError as detail:
            return str(detail)
    return None


def _load(name: str, what: str, missing: str | None) -> bool:
    """Loads op library ``name``; falls back (see above) when it fails to load, or when it
    is missing and ``missing`` says why that is a fault."""
    library = _find_library(name)
    if library is None:
        if missing is not None:
            _fallback(what, missing)
        return False
    error = _load_library(library)
    if error is not None:
        _fallback(what, f"loading {library.name} failed: {error}")
        return False
    return True


def _load_ops() -> bool:
    if hasattr(torch.ops, "minerva") and hasattr(torch.ops.minerva, "gae"):
        return True
    return _load("_C.so", "ops",
                 "minerva/_C.so not found; was the package built with `pip install .`?")


OPS_LOADED = _load_ops()


def _load_cuda_ops() -> bool:
    # The CUDA kernels need torch built with CUDA (a CPU-only torch lacks the symbols they
    # link against) and the schemas from _C. A build without nvcc has no _C_cuda.so, which
    # is no fault: CUDA tensors then get the dispatcher's error, which names the op.
    if not OPS_LOADED or torch.version.cuda is None:
        return False
    if torch._C._dispatch_has_kernel_for_dispatch_key("minerva::gae", "CUDA"):
        return True
    return _load("_C_cuda.so", "CUDA kernels", missing=None)


CUDA_OPS_LOADED = _load_cuda_ops()


def rollout_storage_class():
    """The native RolloutStorage class, or None when the module did not load."""
    return None if _storage_module is None else _storage_module.RolloutStorage
