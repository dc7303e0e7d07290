"""Stopping on SIGINT (Ctrl-C) and SIGTERM (schedulers, ``docker stop``) without losing work.

The first signal asks training to stop once the current iteration is complete, so the
checkpoint written then holds exactly what was trained on. A second signal exits at once
(exit status 128 + its number), without a traceback and without writing anything.
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
    """``with StopOnSignal(...) as stop:`` ... ``if stop.requested: ...``.

    Args:
        on_request: called with the signal's name on the first signal (what happens next).
        on_abort: called with the signal's name on the second, just before exiting (what
            was kept).

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, on_request: Callable[[str], str], on_abort: Callable[[str], str]):
        self._on_request, self._on_abort = on_request, on_abort
        self.requested: int | None = None  # the first signal's number
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = signum
            print(self._on_request(name), file=sys.stderr, flush=True)
            return
        print(self._on_abort(name), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + signum)
