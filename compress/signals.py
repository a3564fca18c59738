"""SIGTERM and SIGINT end a command like an error does, so every ``finally`` (temporary
output folders, half-written files) cleans up before the process exits.

A second signal while cleaning up gets the system's default action (immediate exit);
whatever it leaves is removed by the next run (see :func:`compress.atomic.remove_stale`).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (not an ``Exception``:
    ``except Exception`` blocks must not swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _on_signal(signum, frame):
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextmanager
def raise_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt``.

    A signal the parent set to be ignored stays ignored; outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old = signal.getsignal(sig)
        if old is signal.SIG_IGN:
            continue
        previous[sig] = old
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
