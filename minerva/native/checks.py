"""Argument checks for the Python side of the ops (the references and the fake kernels).

They mirror the checks in ``csrc/ops.h`` word for word, so a bad argument reads the same
whichever implementation meets it.
"""

from __future__ import annotations

import torch

_FLOATING = (torch.float32, torch.float64)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _require_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"minerva.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_floating(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in _FLOATING:
        raise ValueError(
            f"minerva.{op}: {name} must be float32 or float64, got {_dtype_name(t.dtype)}"
        )


def _check_bool(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype != torch.bool:
        raise ValueError(f"minerva.{op}: {name} must be bool, got {_dtype_name(t.dtype)}")


def _check_like(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor, *,
                dtype: bool = False) -> None:
    if dtype and t.dtype != ref.dtype:
        raise ValueError(
            f"minerva.{op}: {name} has dtype {_dtype_name(t.dtype)} but {ref_name} has dtype "
            f"{_dtype_name(ref.dtype)}"
        )
    if t.shape != ref.shape:
        raise ValueError(
            f"minerva.{op}: {name} has shape {_shape(t)} but {ref_name} has shape {_shape(ref)}"
        )
    if t.device != ref.device:
        raise ValueError(
            f"minerva.{op}: {name} is on a different device than {ref_name} "
            "(all tensors must be on one device)"
        )


def _check_dim(op: str, name: str, t: torch.Tensor, dim: int, layout: str) -> None:
    if t.dim() != dim:
        raise ValueError(f"minerva.{op}: {name} must be {layout}, got shape {_shape(t)}")


def check_gae_args(rewards, values, next_values, terminated, done, gamma, lam) -> None:
    op = "gae"
    for name, t in (("rewards", rewards), ("values", values), ("next_values", next_values),
                    ("terminated", terminated), ("done", done)):
        _require_tensor(op, name, t)
    _check_dim(op, "rewards", rewards, 2, "2-D [T, N]")
    _check_floating(op, "rewards", rewards)
    _check_bool(op, "terminated", terminated)
    _check_bool(op, "done", done)
    _check_like(op, "values", values, "rewards", rewards, dtype=True)
    _check_like(op, "next_values", next_values, "rewards", rewards, dtype=True)
    _check_like(op, "terminated", terminated, "rewards", rewards)
    _check_like(op, "done", done, "rewards", rewards)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"minerva.gae: gamma must be in [0, 1], got {gamma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"minerva.gae: lam must be in [0, 1], got {lam}")


def check_topk_args(advantages, valid, fraction) -> None:
    op = "topk_mask"
    _require_tensor(op, "advantages", advantages)
    _require_tensor(op, "valid", valid)
    _check_dim(op, "advantages", advantages, 1, "1-D [B]")
    _check_floating(op, "advantages", advantages)
    _check_bool(op, "valid", valid)
    _check_like(op, "valid", valid, "advantages", advantages)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"minerva.topk_mask: fraction must be in (0, 1], got {fraction}")


def check_weights_args(advantages, selected, eta) -> None:
    op = "vmpo_weights"
    for name, t in (("advantages", advantages), ("selected", selected), ("eta", eta)):
        _require_tensor(op, name, t)
    _check_dim(op, "advantages", advantages, 1, "1-D [B]")
    _check_floating(op, "advantages", advantages)
    _check_bool(op, "selected", selected)
    _check_like(op, "selected", selected, "advantages", advantages)
    _check_dim(op, "eta", eta, 0, "a 0-d tensor")
    if eta.dtype != advantages.dtype:
        raise ValueError(
            f"minerva.vmpo_weights: eta has dtype {_dtype_name(eta.dtype)} but advantages has "
            f"dtype {_dtype_name(advantages.dtype)}"
        )
    if eta.device != advantages.device:
        raise ValueError(
            "minerva.vmpo_weights: eta is on a different device than advantages "
            "(all tensors must be on one device)"
        )
