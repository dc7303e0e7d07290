"""Helpers shared by several test files: input makers and tolerances for the op tests (CPU and
CUDA), a command line run inside the test's process or as a process of its own, the checks
that a command's error is one line, checkpoints edited for a test, and a small V-MPO trainer.
Kept light (torch and the standard library): the sanitizer run imports it with the op tests,
so minerva's trainers are imported only when a trainer is made."""

import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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


def run_module(module: str, *args, cwd) -> subprocess.CompletedProcess:
    """``python -m module ARGS`` as a process of its own, from ``cwd``."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def one_line(stderr: str, message: str) -> None:
    """``stderr`` ends in one line that matches ``message``: no traceback, no usage text."""
    assert "Traceback" not in stderr and "usage:" not in stderr, stderr
    assert re.search(message, stderr.strip().splitlines()[-1]), stderr


def one_line_error(result, message):
    """A command that exited with 2 and one line of error matching ``message``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    # one line: no usage text before it, no traceback (a library's warnings may come first)
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.search(message, last), result.stderr


def edited(saved: Path, path: Path, edit) -> Path:
    """``saved`` with ``edit(state)`` applied, at ``path``."""
    state = torch.load(saved, weights_only=True)
    edit(state)
    torch.save(state, path)
    return path


def set_value(*keys, value):
    """An ``edit`` for :func:`edited`: the entry at ``keys`` (a tensor's first element) set
    to ``value``."""
    def edit(state):
        target = state
        for key in keys[:-1]:
            target = target[key]
        if isinstance(target[keys[-1]], torch.Tensor):
            target[keys[-1]].view(-1)[0] = value
        else:
            target[keys[-1]] = value
    return edit


# a small CartPole-sized V-MPO trainer: 16-unit networks, 4 envs x 16 steps, 2 M-steps
SMALL = dict(rollout_steps=16, num_envs=4, m_steps=2, eval_episodes=2, progress=False)


def make_trainer(env_id="CartPole-v1", backend="envpool", **overrides):
    from minerva.trainers.vmpo.trainer import VMPOTrainer

    options = {**SMALL, "backend": backend, **overrides}
    return VMPOTrainer(env_id, 0, "cpu", (16,), (16,), options.pop("rollout_steps"), **options)
