"""Final and best whole-network values of each run, and their mean over seeds.

>>> from analysis import read_runs, summarise
>>> s = summarise(read_runs("runs/out/demo-20261125-170000"))
>>> s.runs          # one row per run: <metric>_final, <metric>_best
>>> s.groups        # one row per (group, quantity): mean, std, n, ci95 over the seeds
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.series import SEED, compared_columns, network_series

# whole-network metrics summarised, with the direction that is better
HIGHER_IS_BETTER = {
    "mean_node_acc": True,
    "mean_node_f1": True,
    "eval_acc": True,  # the network-average model (node -1)
    "eval_f1": True,
    "product_consensus": False,
    "train_loss": False,
    "eval_loss": False,
    "interference": False,
}


@dataclass(frozen=True)
class Summary:
    """``runs``: index run; the compared config columns, seed, and for each metric logged
    ``<metric>_final`` (its last round) and ``<metric>_best`` (max or min over rounds).
    ``groups``: columns compared config columns, quantity, mean, std, n, ci95; the statistics
    of each quantity of ``runs`` over the runs of a group (its seeds)."""

    runs: pd.DataFrame
    groups: pd.DataFrame

    @property
    def group_columns(self) -> list[str]:
        return [c for c in self.groups.columns if c not in {"quantity", *_STATS}]


_STATS = ("mean", "std", "n", "ci95")


def final_and_best(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: ``<metric>_final`` and ``<metric>_best`` of the metrics in
    ``HIGHER_IS_BETTER`` that the run logged at the network level, plus its config columns."""
    cols = compared_columns(frame)
    per_run = frame.drop_duplicates("run").set_index("run")
    table = per_run[[*cols, SEED]] if SEED in per_run else per_run[cols]
    values = {}
    for metric, higher in HIGHER_IS_BETTER.items():
        s = network_series(frame, metric)
        if s.empty:
            continue
        by_run = s.sort_values("round").groupby("run")["value"]
        values[f"{metric}_final"] = by_run.last()
        values[f"{metric}_best"] = by_run.max() if higher else by_run.min()
    return table.join(pd.DataFrame(values)).sort_index()


def ci95_half_width(std: float, n: int) -> float:
    """Half-width of the 95% t-interval of a mean: t_{0.975, n-1} std / sqrt(n); NaN if n < 2."""
    if n < 2 or not np.isfinite(std):
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))


def seed_statistics(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof 1), n and 95% half-width of every value column of ``runs`` over
    the runs that share the ``by`` columns; one row per (group, quantity)."""
    quantities = [c for c in runs.columns if c not in {*by, SEED}]
    long = runs.melt(id_vars=by, value_vars=quantities, var_name="quantity").dropna(
        subset=["value"]
    )
    long["value"] = long["value"].astype(float)
    out = long.groupby([*by, "quantity"], sort=False, dropna=False)["value"].agg(
        mean="mean", std="std", n="size"
    )
    out = out.reset_index().sort_values(by, kind="stable", ignore_index=True)
    out["ci95"] = [ci95_half_width(s, n) for s, n in zip(out["std"], out["n"])]
    return out


def summarise(frame: pd.DataFrame) -> Summary:
    """Final and best values per run, and their statistics over the seeds of each group."""
    if frame.empty:
        raise ValueError("no metrics to summarise: the frame is empty")
    runs = final_and_best(frame)
    return Summary(runs=runs, groups=seed_statistics(runs, compared_columns(frame)))


def by_setting(frame: pd.DataFrame, metric: str = "mean_node_acc") -> pd.DataFrame:
    """The final value of ``metric`` over seeds, one row per method (and its options) and one
    column per setting: the named things that differ between runs (topology, partition,
    schedule, model...), e.g. ``ring, dirichlet``. Columns row, setting, mean, std, n (std
    with ddof 1; NaN for one run); empty when no run logged ``metric``.

    This is the paper-style headline table (method x topology x IID/non-IID); the report
    prints it as a grid."""
    from analysis.labels import NAMED, run_labels

    finals = network_series(frame, metric).sort_values("round").groupby("run")["value"].last()
    if finals.empty:
        return pd.DataFrame(columns=["row", "setting", "mean", "std", "n"])
    named = [c for c in compared_columns(frame) if c in NAMED]
    per_run = frame.drop_duplicates("run").set_index("run")
    setting = (
        per_run[named].astype(str).agg(", ".join, axis=1)
        if named
        else pd.Series("all", index=per_run.index)
    )
    rows = run_labels(frame, leave_out=tuple(named))
    table = pd.DataFrame({"row": rows, "setting": setting, "value": finals}).dropna()
    out = table.groupby(["row", "setting"])["value"].agg(mean="mean", std="std", n="size")
    return out.reset_index()
