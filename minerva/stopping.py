"""Stopping on SIGINT (Ctrl-C) and SIGTERM (schedulers, ``docker stop``) without losing work.

The first signal asks training to stop once the current iteration is complete, so the
checkpoint written then holds exactly what was trained on. It also puts the signals' previous
handlers back, so a second signal acts as it would without minerva, at once and even while
native code blocks: SIGINT raises KeyboardInterrupt, SIGTERM ends the process. Once a run
has stopped and is only closing, :func:`exit_at_once_on_signals` makes any further signal end
the process at once, without a traceback from whatever it was closing; and
:func:`ignore_signals` lets a finished process exit with its status.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _restore(self) -> None:
        restore_handlers(self._previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum
        # os.write, not print: a signal can arrive inside another write to stderr (the
        # progress bar's), and a buffered write re-entered raises
        line = self._on_request(signal.Signals(signum).name)
        if line:
            os.write(2, (line + "\n").encode())
        self._restore()


def exit_at_once_on_signals() -> dict[int, object]:
    """From here on, SIGINT or SIGTERM ends the process at once with status 128 + the
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

    return {signum: signal.signal(signum, exit_now) for signum in SIGNALS}


def restore_handlers(previous: dict[int, object]) -> None:
    """Puts back the signal handlers ``previous`` (by signal number) names; None, a handler
    installed outside Python, which cannot be put back, becomes the default."""
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def ignore_signals() -> None:
    """SIGINT and SIGTERM ignored from here on: for a process that has finished and is only
    exiting. Python sets the handlers it installed back to the default in its shutdown, after
    which a signal would kill the process instead of letting it exit with its status; an
    ignored signal stays ignored. Does nothing outside the main thread."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
