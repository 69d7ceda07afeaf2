"""Whole-network series of each run, and the groups of runs that differ only in their seed.

Runs read by ``read_runs`` carry their config values as columns. The columns whose values
differ between runs (``name``, ``run`` and ``seed`` aside) say what was compared; runs equal on
all of them are seeds of one group, drawn as one line with a band and averaged in summaries.
"""

from __future__ import annotations

import pandas as pd

from decaf_ray.engine.log import COLUMNS, NETWORK

METHOD = "algorithm.name"
SEED = "seed"
_NOT_COMPARED = {"run", "name", SEED}
# per-node metrics whose network value is the mean over nodes when no node -1 row exists
# (fedavg logs its server's interference at node -1; the other methods one value per node)
NODE_MEAN = {"interference", "tsvd_tail", "top_singular_value", "bytes_sent"}


def compared_columns(frame: pd.DataFrame) -> list[str]:
    """Config columns whose values differ between the runs of ``frame``, method first.

    The method is always one of them, so a single run or seeds alone still form a group."""
    per_run = frame.drop_duplicates("run")
    config = [c for c in per_run.columns if c not in COLUMNS and c not in _NOT_COMPARED]
    varying = [c for c in config if per_run[c].astype(str).nunique() > 1 and c != METHOD]
    return [METHOD, *varying] if METHOD in frame.columns else varying


def network_series(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows (run, round, value, virtual_s) of ``metric`` for the whole network.

    The node -1 row of each round where one exists; for the per-node metrics of ``NODE_MEAN``
    in runs without one, the mean over nodes of that round (virtual_s: the latest node's)."""
    rows = frame[frame["metric"] == metric]
    net = rows[rows["node"] == NETWORK]
    keep = ["run", "round", "value", "virtual_s"]
    if metric not in NODE_MEAN:
        return net[keep].reset_index(drop=True)
    per_node = rows[(rows["node"] != NETWORK) & ~rows["run"].isin(set(net["run"]))]
    means = (
        per_node.groupby(["run", "round"], as_index=False)
        .agg(value=("value", "mean"), virtual_s=("virtual_s", "max"))
        .loc[:, keep]
    )
    return pd.concat([net[keep], means], ignore_index=True).sort_values(["run", "round"])


def over_seeds(series: pd.DataFrame, labels: pd.Series, x: str = "round") -> pd.DataFrame:
    """Per label and round: mean, min and max of ``value`` over the group's runs and how many
    runs gave one (columns label, x, mean, lo, hi, n). An ``x`` other than round (virtual_s,
    bytes) is averaged over the runs too: a group's x is its mean at that round."""
    s = series.assign(label=series["run"].map(labels))
    spec = {
        "mean": ("value", "mean"),
        "lo": ("value", "min"),
        "hi": ("value", "max"),
        "n": ("value", "size"),
    }
    if x != "round":
        spec[x] = (x, "mean")
    stats = s.groupby(["label", "round"]).agg(**spec).reset_index()  # one row per group, round
    return stats.sort_values(["label", x])[["label", x, "mean", "lo", "hi", "n"]]
