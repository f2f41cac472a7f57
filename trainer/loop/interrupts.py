"""SIGTERM/SIGINT become a request to stop at the next safe point, never a traceback.

run_train.py installs `Interrupts` as its very first statement, so a signal that arrives
while TensorFlow is still importing is kept too. The driver asks `pending` at its safe
points: after each compiled loop (it then saves a checkpoint and exits 3), between the parts
of the export, and between the phases of start-up.
"""

from __future__ import annotations

import signal
import threading


class Interrupts:
    """Records SIGTERM/SIGINT instead of dying; `install()` / `uninstall()` handlers."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: list[int] = []
        self._previous = {}

    def install(self) -> Interrupts:
        """Installs the handlers (only possible in the main thread; elsewhere a no-op)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        """Puts back the handlers that were installed before."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        self.received.append(signum)

    @property
    def pending(self) -> int | None:
        """The first signal received, or None."""
        return self.received[0] if self.received else None

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.uninstall()
