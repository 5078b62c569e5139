"""Ctrl-C and SIGTERM as a request: the step in hand finishes, then the loop saves a checkpoint and exits."""

from __future__ import annotations

import signal


class StopSignal:
    """SIGINT/SIGTERM finish the current step, then the loop saves a checkpoint and exits."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    @property
    def exit_code(self) -> int:
        """The shell's code for the signal received; SIGTERM's where another process of the run received it."""
        return 128 + (self.received or signal.SIGTERM)

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
