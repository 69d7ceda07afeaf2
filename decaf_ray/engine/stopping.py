"""Stopping a run on SIGINT or SIGTERM after the round in flight.

The command line calls :func:`install`; the executor asks :func:`requested` between
submissions and, once asked to stop, submits nothing new, lets what is in flight finish, logs
every round that completed and raises :class:`RunStopped`. A second signal stops at once
(KeyboardInterrupt). Library callers that never install the handlers are not affected.
"""

from __future__ import annotations

import signal
import sys

_received: list[int] = []
_installed: list[bool] = []


class RunStopped(Exception):
    """The run stopped on a signal after round ``round_idx`` (its metrics are flushed)."""

    def __init__(self, name: str, round_idx: int, signum: int) -> None:
        self.name, self.round_idx, self.signum = name, round_idx, signum
        self.folder = None  # the run (or sweep) folder, set by the runner
        what = signal.Signals(signum).name
        super().__init__(f"{name} stopped by {what} after round {round_idx}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as shells report


def _handle(signum: int, _frame) -> None:
    if _received:  # the second signal: stop now
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt
    _received.append(signum)
    print(
        f"\ndecaf-ray: {signal.Signals(signum).name}: stopping after the round in flight "
        "(press Ctrl-C again to stop at once)",
        file=sys.stderr,
        flush=True,
    )


def install() -> None:
    """Handle SIGINT and SIGTERM as above (call from the main thread)."""
    _received.clear()
    _installed[:] = [True]
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)


def reinstall() -> None:
    """Take the handlers back after ``ray.init``, whose driver sets its own SIGTERM handler
    (it logs a stack and aborts); a no-op unless :func:`install` was called."""
    if _installed:
        signal.signal(signal.SIGINT, _handle)
        signal.signal(signal.SIGTERM, _handle)


def requested() -> int | None:
    """The signal that asked the run to stop, if one did."""
    return _received[0] if _received else None
