"""Input makers and tolerances shared by the op tests (CPU and CUDA), and a command line run
inside the test's process."""

import subprocess
from collections.abc import Callable, Sequence

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


def run_main(main: Callable[[Sequence[str]], int], args: Sequence[str], capsys
             ) -> subprocess.CompletedProcess:
    """A CLI's ``main(args)`` run in this process, reported as ``subprocess.run`` would: its
    exit status (a ``SystemExit``'s code, as argparse's errors end) and what it wrote. Seconds
    faster than a process, which imports torch afresh; a test of each CLI still runs it as a
    process."""
    capsys.readouterr()  # what the test printed before
    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = (0 if exit_.code is None else exit_.code if isinstance(exit_.code, int)
                  else 1)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), status, captured.out, captured.err)
