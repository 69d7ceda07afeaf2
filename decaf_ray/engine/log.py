"""Tidy long-format metrics, flushed to parquet as the run goes.

Each row is (round, node, metric, value, wall_s, virtual_s); node -1 marks whole-network values.
``virtual_s`` is the simulated time (decaf_ray/virtual) the row describes, given with each row.
``metrics.parquet`` is a folder of one parquet file per flush, so a crash loses at most the
rows not yet flushed (the current round) and ``pandas.read_parquet`` reads the folder as one
table. The column set is fixed here; ``analysis.read_runs`` is the reader.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pandas as pd

COLUMNS = ("round", "node", "metric", "value", "wall_s", "virtual_s")
NETWORK = -1
# wall-clock rows: they differ between identical runs, so comparisons of runs leave them out
# (the checkpoint rows too, which only the runner's path writes)
WALL_CLOCK = frozenset(
    {
        "checkpoint_s",
        "checkpoint_mb",
        "train_s",
        "exchange_s",
        "combine_s",
        "metrics_s",
        "eval_s",
        "setup_s",
        "node_train_s",
        "round_wall_s",
    }
)


class MetricsLog:
    def __init__(self, run_dir: Path, keep_parts: int = 0) -> None:
        """A log writing into ``run_dir``; ``keep_parts`` > 0 goes on after that many parts
        (a resumed run: parts written after its checkpoint are removed, they are redone, and
        ``wall_s`` goes on from the kept parts' last value, so it counts the run's own time
        and never goes back; the pause between stop and resume is left out)."""
        self.path = Path(run_dir) / "metrics.parquet"
        self.path.mkdir(parents=True, exist_ok=True)
        for part in self.path.glob("part-*.parquet"):
            if int(part.stem.split("-")[1]) >= keep_parts:
                part.unlink()
        self._rows: list[tuple] = []
        self._parts = keep_parts
        self._t0 = time.perf_counter() - (_last_wall_s(self.path) if keep_parts else 0.0)
        self.latest: dict[str, float] = {}  # last network-level value of each metric

    def add(self, round_idx: int, node: int, metric: str, value: float, virtual_s: float) -> None:
        wall = time.perf_counter() - self._t0
        self._rows.append((round_idx, node, metric, float(value), wall, float(virtual_s)))
        if node == NETWORK:
            self.latest[metric] = float(value)

    def add_nodes(
        self, round_idx: int, metric: str, values: dict[int, float], virtual_s: float
    ) -> None:
        for node, value in sorted(values.items()):
            self.add(round_idx, node, metric, value, virtual_s)

    def flush(self) -> None:
        if not self._rows:
            return
        frame = pd.DataFrame(self._rows, columns=list(COLUMNS)).astype(
            {
                "round": "int32",
                "node": "int32",
                "metric": "string",
                "value": "float64",
                "wall_s": "float64",
                "virtual_s": "float64",
            }
        )
        # written aside, then renamed: a part is whole or absent (readers skip dot files)
        final = self.path / f"part-{self._parts:06d}.parquet"
        tmp = self.path / f".{final.name}.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, final)
        self._parts += 1
        self._rows = []

    @property
    def parts(self) -> int:
        """Parts written so far (a checkpoint records it)."""
        return self._parts

    def frame(self) -> pd.DataFrame:
        self.flush()
        return read_metrics(self.path)


def _last_wall_s(path: Path) -> float:
    """The largest ``wall_s`` of the metrics folder's readable parts (0 for none), reading
    that column only."""
    import pyarrow.compute as pc

    walls = [t.column("wall_s") for t in _read_parts(path, ["wall_s"])]
    return max((float(pc.max(w).as_py()) for w in walls if len(w)), default=0.0)


def _read_parts(path: Path, columns: list[str] | None = None) -> list:
    """The metrics folder's parts as pyarrow tables, in order; a part that cannot be read
    (torn by a crash of an older version, or a full disk) is skipped and named on stderr."""
    import pyarrow.parquet as pq

    tables = []
    for part in sorted(Path(path).glob("part-*.parquet")):
        try:
            tables.append(pq.read_table(part, columns=columns))
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            print(f"decaf-ray: skipped unreadable metrics part {part}: {exc}", file=sys.stderr)
    return tables


def read_metrics(path: Path) -> pd.DataFrame:
    """The metrics folder as one table (unreadable parts skipped, see :func:`_read_parts`)."""
    frames = [t.to_pandas() for t in _read_parts(path)]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)
