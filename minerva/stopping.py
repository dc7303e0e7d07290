"""Stopping on SIGINT (Ctrl-C), SIGTERM (schedulers, ``docker stop``) and SIGHUP (the
terminal closed) without losing work.

The first signal asks training to stop once the current iteration is complete, so the
checkpoint written then holds exactly what was trained on. It also puts the signals' previous
handlers back, so a second signal acts as it would without minerva, at once and even while
native code blocks: SIGINT raises KeyboardInterrupt, SIGTERM and SIGHUP end the process (an
ignored SIGHUP, ``nohup``'s, stays ignored). A terminal that has hung up fails every write,
so from the first signal on, output to one goes to ``os.devnull``
(:func:`discard_dead_outputs`). Once a run has stopped and is only closing,
:func:`exit_at_once_on_signals` makes any further signal end the process at once, without a
traceback from whatever it was closing; and :func:`ignore_signals` lets a finished process
exit with its status.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _handled_signals() -> tuple[int, ...]:
    """:data:`SIGNALS`, less SIGHUP when it is ignored: ``nohup`` ignores it so that the run
    outlives its terminal."""
    return tuple(signum for signum in SIGNALS
                 if signum != signal.SIGHUP or signal.getsignal(signum) != signal.SIG_IGN)


class StopOnSignal:
    """``with StopOnSignal(...) as stop:`` ... ``if stop.requested is not None: ...``.

    Args:
        on_request: given the signal's name on the first signal, returns the line to print
            (what happens next; empty: nothing).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, on_request: Callable[[str], str]):
        self._on_request = on_request
        self.requested: int | None = None  # the first signal's number
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in _handled_signals():
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _restore(self) -> None:
        restore_handlers(self._previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum
        discard_dead_outputs()
        # os.write, not print: a signal can arrive inside another write to stderr (the
        # progress bar's), and a buffered write re-entered raises
        line = self._on_request(signal.Signals(signum).name)
        if line:
            os.write(2, (line + "\n").encode())
        self._restore()


def discard_dead_outputs() -> None:
    """Points stdout and stderr at ``os.devnull`` where they cannot be written (a terminal
    that has hung up, SIGHUP's usual cause, fails every write with EIO, even an empty one),
    so that stopping, and the checkpoint it writes, do not fail on a print."""
    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)


def exit_at_once_on_signals() -> dict[int, object]:
    """From here on, SIGINT, SIGTERM or SIGHUP ends the process at once with status 128 + the
    signal's number: for a run that has stopped (its checkpoint, if any, written and named)
    and is closing, where a KeyboardInterrupt would surface as a traceback from whichever
    cleanup or exit handler it interrupted. Returns the handlers it replaced, for
    :func:`restore_handlers` (none outside the main thread, where it does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def exit_now(signum: int, frame: FrameType | None) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, RuntimeError):  # closed, or re-entered mid-write
                pass
        os._exit(128 + signum)

    return {signum: signal.signal(signum, exit_now) for signum in _handled_signals()}


def restore_handlers(previous: dict[int, object]) -> None:
    """Puts back the signal handlers ``previous`` (by signal number) names; None, a handler
    installed outside Python, which cannot be put back, becomes the default."""
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def ignore_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP ignored from here on: for a process that has finished and is
    exiting. Python sets the handlers it installed back to the default in its shutdown, after
    which a signal would kill the process instead of letting it exit with its status; an
    ignored signal stays ignored. Does nothing outside the main thread."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
