"""The errors minerva raises on purpose; the command lines route them by type."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import NoReturn


class OptionError(ValueError):
    """A value of one option that cannot train: ``option`` names it (a
    :class:`~minerva.config.TrainConfig` field, ``--option-name`` on the command line) and
    ``reason`` says why. Its message is ``"option: reason"``."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option}: {reason}")
        self.option, self.reason = option, reason


class OutDirError(OptionError):
    """A run folder that cannot be used as it is: another run's, a run another process is
    writing, not writable, or not a folder."""

    def __init__(self, reason: str) -> None:
        super().__init__("out_dir", reason)


class NonFiniteError(RuntimeError):
    """An environment gave, or the update computed, NaN or infinity. Raised before the value
    reaches a running statistic or a checkpoint; the message names the quantity and where.

    Raised by the update, it comes after the gradient steps: the trainer's weights in memory
    may then hold the non-finite values, so resume from the last checkpoint rather than
    saving this trainer."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT, SIGTERM or SIGHUP after a completed iteration, with a
    checkpoint of it written. A KeyboardInterrupt, so ``except Exception`` does not swallow
    it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for
        SIGTERM, 129 for SIGHUP)."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none): for one-line
    messages that wrap a library's multi-line one."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class OneLineParser(argparse.ArgumentParser):
    """The command lines' parser: a bad argument is the one line ``prog: error: message``
    (exit status 2), without argparse's usage text first (the trainer's runs to ~50 lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def unexpected_error(prog: str, error: Exception, debug: bool) -> int:
    """A command line's unexpected error: one line and exit status 1, or with ``--debug``
    (``debug``) the error raised again, for its traceback."""
    if debug:
        raise error
    print(f"{prog}: error: {type(error).__name__}: {error}\n"
          "(rerun with --debug for the traceback)", file=sys.stderr)
    return 1
