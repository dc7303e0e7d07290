"""Stopping on SIGINT (Ctrl-C) and SIGTERM (schedulers, ``docker stop``) without losing work.

The first signal asks training to stop once the current iteration is complete, so the
checkpoint written then holds exactly what was trained on. It also puts the signals' previous
handlers back, so a second signal acts as it would without minerva, at once and even while
native code blocks: SIGINT raises KeyboardInterrupt, SIGTERM ends the process.
"""

from __future__ import annotations

import os
import signal
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
        for signum, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back; the default
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum
        # os.write, not print: a signal can arrive inside another write to stderr (the
        # progress bar's), and a buffered write re-entered raises
        line = self._on_request(signal.Signals(signum).name)
        if line:
            os.write(2, (line + "\n").encode())
        self._restore()
