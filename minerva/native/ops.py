"""minerva's native ops: GAE/returns, top-k selection and V-MPO weights.

Each op is a torch dispatcher op (``torch.ops.minerva.*``) implemented in C++ against torch's
stable ABI (``csrc/``). This module registers their fake kernels (so they trace under
``torch.compile``) and the autograd formulas of ``gae`` and ``vmpo_weights``, and exposes
them as plain functions. :mod:`minerva.reference` has the same functions in pure torch, with
the equations; they take over (with a warning) when the native library is missing.

Bad arguments raise ``ValueError`` (``TypeError`` for a non-tensor) naming the argument.
"""

from __future__ import annotations

import torch

from minerva.native import loading, reference
from minerva.native.checks import check_gae_args, check_topk_args, check_weights_args

__all__ = ["gae", "topk_mask", "vmpo_weights", "native_available", "cuda_kernels_available"]


def native_available() -> bool:
    """Whether the ops run on minerva's native library (False: the Python references)."""
    return loading.OPS_LOADED


def cuda_kernels_available() -> bool:
    """Whether the ops have CUDA kernels (minerva's ``_C_cuda``, loaded into torch with CUDA).
    Without them, CUDA tensors get the dispatcher's error naming the op and backend."""
    return loading.CUDA_OPS_LOADED


def _argument_error(error: RuntimeError) -> Exception:
    # The kernels report bad arguments as RuntimeError("minerva.<op>: ..."), and the
    # dispatcher a wrongly typed one as RuntimeError("minerva::<op>() Expected a value of
    # type ..."); surface them as the ValueError / TypeError the references raise.
    message = str(error)
    if message.startswith("minerva."):
        return ValueError(message)
    if message.startswith("minerva::") and "Expected a value of type" in message:
        return TypeError(message)
    return error


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns of a ``[T, N]`` rollout, differentiable in ``rewards``,
    ``values`` and ``next_values``; see :func:`minerva.reference.gae`."""
    try:
        return torch.ops.minerva.gae.default(
            rewards, values, next_values, terminated, done, gamma, lam
        )
    except RuntimeError as error:
        raise _argument_error(error) from None


def topk_mask(advantages: torch.Tensor, valid: torch.Tensor, fraction: float) -> torch.Tensor:
    """The top ``fraction`` of the valid advantages; see :func:`minerva.reference.topk_mask`."""
    try:
        return torch.ops.minerva.topk_mask.default(advantages, valid, fraction)
    except RuntimeError as error:
        raise _argument_error(error) from None


def vmpo_weights(
    advantages: torch.Tensor, selected: torch.Tensor, eta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """E-step weights and log-mean-exp, differentiable in ``eta`` (and ``advantages``); see
    :func:`minerva.reference.vmpo_weights`."""
    try:
        return torch.ops.minerva.vmpo_weights.default(advantages, selected, eta)
    except RuntimeError as error:
        raise _argument_error(error) from None


def _register_python_side() -> None:
    @torch.library.register_fake("minerva::gae")
    def _gae_fake(rewards, values, next_values, terminated, done, gamma, lam):
        check_gae_args(rewards, values, next_values, terminated, done, gamma, lam)
        out = torch.empty(rewards.shape, dtype=rewards.dtype, device=rewards.device)
        return out, torch.empty_like(out)

    @torch.library.register_fake("minerva::topk_mask")
    def _topk_mask_fake(advantages, valid, fraction):
        check_topk_args(advantages, valid, fraction)
        return torch.empty(valid.shape, dtype=torch.bool, device=valid.device)

    @torch.library.register_fake("minerva::vmpo_weights")
    def _vmpo_weights_fake(advantages, selected, eta):
        check_weights_args(advantages, selected, eta)
        weights = torch.empty(advantages.shape, dtype=advantages.dtype, device=advantages.device)
        return weights, torch.empty((), dtype=eta.dtype, device=eta.device)

    def _gae_setup_context(ctx, inputs, output):
        *_, terminated, done, gamma, lam = inputs
        ctx.save_for_backward(terminated, done)
        ctx.gamma, ctx.lam = gamma, lam

    def _gae_backward(ctx, grad_advantages, grad_returns):
        # gae is linear: returns = A + values, A_t = delta_t + c_t A_{t+1} with
        # c_t = gamma * lam * (1 - done_t). With g = dL/dA + dL/dR, the adjoint of that
        # backward scan is the forward scan h_t = g_t + c_{t-1} h_{t-1} (h = dL/ddelta): gae
        # itself on the time-reversed rollout, with rewards g, zero values and done shifted by
        # one step (terminated plays no part once next_values are zero). So the backward runs
        # on the same kernel, on any device, and is differentiable again.
        terminated, done = ctx.saved_tensors
        grads = [g for g in (grad_advantages, grad_returns) if g is not None]
        if not grads:
            return (None,) * 7
        grad = sum(grads[1:], grads[0])
        zeros = torch.zeros_like(grad)
        shifted_done = done.roll(1, 0).flip(0)  # row s holds done[T - 2 - s]; the last is unused
        reversed_h, _ = torch.ops.minerva.gae.default(
            grad.flip(0), zeros, zeros, shifted_done, shifted_done, ctx.gamma, ctx.lam)
        grad_delta = reversed_h.flip(0)
        grad_values = -grad_delta if grad_returns is None else grad_returns - grad_delta
        grad_next_values = grad_delta * (~terminated) * ctx.gamma
        return grad_delta, grad_values, grad_next_values, None, None, None, None

    torch.library.register_autograd(
        "minerva::gae", _gae_backward, setup_context=_gae_setup_context
    )

    def _setup_context(ctx, inputs, output):
        advantages, selected, _ = inputs
        weights, _ = output
        ctx.save_for_backward(advantages, selected, weights, inputs[2])

    def _backward(ctx, grad_weights, grad_log_mean_exp):
        # w and log_mean_exp depend on a / eta only, so with
        #   dL/da_k = w_k / eta * (g_k - <g, w> + g_lme)
        # the eta gradient is dL/deta = -<a, dL/da> / eta (sums over S; w = 0 elsewhere).
        advantages, selected, weights, eta = ctx.saved_tensors
        if grad_weights is None:
            grad_weights = torch.zeros_like(weights)
        if grad_log_mean_exp is None:
            grad_log_mean_exp = torch.zeros_like(eta)
        centred = grad_weights - (grad_weights * weights).sum() + grad_log_mean_exp
        grad_advantages = weights * centred / eta
        chosen = torch.where(selected, advantages, torch.zeros_like(advantages))
        grad_eta = -(chosen * grad_advantages).sum() / eta
        return (grad_advantages if ctx.needs_input_grad[0] else None), None, grad_eta

    torch.library.register_autograd(
        "minerva::vmpo_weights", _backward, setup_context=_setup_context
    )


if native_available():
    _register_python_side()
else:
    gae = reference.gae
    topk_mask = reference.topk_mask
    vmpo_weights = reference.vmpo_weights
