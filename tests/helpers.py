"""Input makers and tolerances shared by the op tests (CPU and CUDA)."""

import torch


def tolerances(dtype, scale=1.0):
    return (dict(rtol=1e-4, atol=1e-4 * scale) if dtype == torch.float32
            else dict(rtol=1e-10, atol=1e-10 * scale))


def random_mask(shape, probability):
    return torch.rand(shape) < probability


def make_gae_inputs(T, N, dtype, p_terminated, p_truncated, transposed=False):
    shape = (N, T) if transposed else (T, N)
    tensors = [torch.randn(shape, dtype=dtype) for _ in range(3)]
    terminated = random_mask(shape, p_terminated)
    done = terminated | random_mask(shape, p_truncated)
    inputs = tensors + [terminated, done]
    if transposed:  # non-contiguous [T, N] views
        inputs = [t.t() for t in inputs]
    return inputs
