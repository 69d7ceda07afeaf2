"""Run one benchmark size in a child process under a memory and a time guard.

A size that outgrows the machine must cost one line in the table, not the machine: the
child's whole process tree (the driver and the Ray processes it starts) is sampled every
``poll_s``; past ``limit_bytes`` of summed resident memory, or ``timeout_s`` of wall time,
every process of the tree is killed by its id and the answer says so, with the last stage
the child announced (a line ``stage: <what>`` on its standard output). Sizes run one after
another, never two at once.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

STAGE = "stage: "


@dataclass(frozen=True)
class Guarded:
    """How a guarded child ended. ``status``: ``ok``, ``failed`` (it exited non-zero),
    ``memory`` or ``timeout`` (killed by the guard); ``stage``: the last one it announced;
    ``peak_tree_bytes``: the largest summed RSS of its process tree that was sampled."""

    status: str
    stage: str
    returncode: int | None
    wall_s: float
    peak_tree_bytes: int
    tail: str  # the last lines of its output

    @property
    def reason(self) -> str:
        """One line: why the size has no figures ('' when it ran)."""
        gib = self.peak_tree_bytes / 2**30
        if self.status == "memory":
            return f"memory guard: {gib:.1f} GiB in use during '{self.stage}', killed"
        if self.status == "timeout":
            return f"time guard: still in '{self.stage}' after {self.wall_s:.0f} s, killed"
        if self.status == "failed":
            last = self.tail.strip().splitlines()[-1:] or [""]
            return f"failed in '{self.stage}' (exit {self.returncode}): {last[0][:160]}"
        return ""


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # gone between listing and reading: it holds nothing now
            continue
    return total


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(procs, timeout=10)


def run_guarded(
    cmd: list[str],
    log_path: Path,
    limit_bytes: int,
    timeout_s: float,
    poll_s: float = 0.2,
    echo=None,
) -> Guarded:
    """Run ``cmd``; its output goes to ``log_path`` (and each stage line to ``echo``)."""
    t0 = time.perf_counter()
    child = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    stage, lines = ["start"], []

    def read() -> None:
        with open(log_path, "w") as log:
            for line in child.stdout:
                log.write(line)
                lines.append(line)
                del lines[:-40]
                if line.startswith(STAGE):
                    stage[0] = line[len(STAGE) :].strip()
                    if echo:
                        echo(stage[0])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc, peak, status = psutil.Process(child.pid), 0, "ok"
    while child.poll() is None:
        tree = _tree(proc)
        peak = max(peak, _rss(tree))
        if peak > limit_bytes or time.perf_counter() - t0 > timeout_s:
            status = "memory" if peak > limit_bytes else "timeout"
            _kill(tree)
            break
        time.sleep(poll_s)
    child.wait()
    reader.join(timeout=10)
    if status == "ok" and child.returncode != 0:
        status = "failed"
    return Guarded(
        status, stage[0], child.returncode, time.perf_counter() - t0, peak, "".join(lines)
    )
