"""A run folder belongs to exactly one run.

:func:`claim` refuses a folder that already holds a run's files (two runs into one ``--out``
would otherwise mix their metrics parts while ``config.yaml`` describes only one) and holds
an exclusive lock on ``<folder>/.lock`` (``fcntl.flock``) while the run writes, so a second
run started into the same folder at the same time is refused too. The lock dies with the
process, so a killed run never leaves a folder locked; its files still mark it as taken.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from decaf_ray.config import ConfigError

RUN_FILES = ("config.yaml", "metrics.parquet", "summary.csv", "placement.json", "sweep.yaml")
LOCK = ".lock"
_held: set[Path] = set()  # folders this process has claimed (a sweep root is its run's too)


class RunDirError(ConfigError):
    """An output folder that cannot take this run."""


def run_files(path: Path) -> list[str]:
    """The files of an earlier run in ``path`` (empty: the folder can take a run)."""
    return [name for name in RUN_FILES if (path / name).exists()]


MIN_FREE_BYTES = 256 * 2**20  # metrics parts, checkpoints, adapters: refuse less than this


def check_writable(path: Path) -> None:
    """Before any work: the run folder ``path`` can be made and written, with room to spare
    (its nearest existing ancestor is a writable folder on a disk with 256 MiB free)."""
    path = Path(path).resolve()
    base = path
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise RunDirError(f"cannot make the run folder {str(path)!r}: {str(base)!r} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write the run folder {str(path)!r}: {str(base)!r} is read-only")
    free = shutil.disk_usage(base).free
    if free < MIN_FREE_BYTES:
        raise RunDirError(
            f"only {free / 2**20:.0f} MiB free on the disk of {str(base)!r}: a run writes "
            f"metrics, checkpoints and adapters there; free some space or choose another --out"
        )


@contextmanager
def claim(path: Path, resume: bool = False) -> Iterator[Path]:
    """Create ``path`` if needed, refuse it if it holds a run (unless ``resume``: it holds
    this run) or another run writes into it, and hold it for the duration of the block."""
    path = Path(path).resolve()
    if path in _held:  # the sweep root of this very run
        yield path
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot write the run folder {str(path)!r}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirError(
            f"another run (pid {other}) is writing into {str(path)!r}: choose another --out"
        ) from None
    try:
        taken = run_files(path)
        if taken and not resume:
            raise RunDirError(
                f"{str(path)!r} already holds a run ({', '.join(taken)}): choose another "
                "--out, or move that run away first (a run folder belongs to one run)"
            )
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _held.add(path)
        yield path
    finally:
        _held.discard(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
