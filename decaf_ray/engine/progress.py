"""Progress of a run: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with carriage returns, which a CI log or a ``nohup`` file keeps as
hundreds of fragments on one line. When stderr is not a terminal, :class:`Progress` writes
one whole line every k rounds instead (k such that a run prints about 20), and always after
the last round.
"""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

LINES_PER_RUN = 20


class Progress:
    def __init__(self, name: str, total: int, done: int, enabled: bool) -> None:
        self.name, self.total, self.done = name, total, done
        self.enabled = enabled
        self.lines = enabled and not sys.stderr.isatty()
        self.every = max(1, total // LINES_PER_RUN)
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and not self.lines:
            self.bar = tqdm(total=total, initial=done, desc=name, unit="round")

    def update(self, post: dict[str, str]) -> None:
        """One more round is done; ``post`` are its headline figures."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(post)
        elif self.lines and (self.done % self.every == 0 or self.done == self.total):
            figures = " ".join(f"{k}={v}" for k, v in post.items())
            elapsed = time.perf_counter() - self.t0
            print(
                f"{self.name}: round {self.done}/{self.total} ({elapsed:.0f} s) {figures}",
                file=sys.stderr,
                flush=True,
            )

    def set_total(self, total: int) -> None:
        """The run turned out to have ``total`` rounds (a time budget stops it early)."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
