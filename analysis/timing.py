"""Virtual time to reach a target: the straggler study's headline numbers.

>>> from analysis import read_runs, time_to
>>> df = read_runs("runs/out/stragglers-...")
>>> df.groupby("run").apply(time_to, metric="product_consensus", target=1e-3)
"""

from __future__ import annotations

import pandas as pd


def time_to(frame: pd.DataFrame, metric: str, target: float, below: bool = True) -> float:
    """First virtual_s at which the whole-network ``metric`` is <= target (``below``) or >=
    target; NaN if it never gets there. ``frame`` holds the rows of one run."""
    rows = frame[(frame["node"] == -1) & (frame["metric"] == metric)].sort_values("virtual_s")
    hit = rows[rows["value"] <= target] if below else rows[rows["value"] >= target]
    return float(hit["virtual_s"].iloc[0]) if len(hit) else float("nan")
