"""``decaf-ray export``: finished runs to the tools people already watch, after the fact.

>>> from analysis.export import export
>>> export(["runs/out/demo-20261125-170000"], "tensorboard")   # -> .../tensorboard
>>> export(["runs/out/demo-20261125-170000"], "mlflow")        # -> .../mlruns

Everything comes from the run folders' ``config.yaml`` and ``metrics.parquet``; nothing runs in
the host actors. Each run's scalars (``scalars``): its whole-network rows (node -1) as
``network/<metric>``, each node's rows as ``node/<i>/<metric>``, the round as the step and the
row's wall time (the run's start, ``config.yaml``'s modification time, + ``wall_s``) as the
event time; the virtual time is the series ``network/virtual_s``. The per-node metrics that
the network has no row of (``interference`` but fedavg's, ``tsvd_tail``, ``bytes_sent``...)
also get ``network/<metric>``: their mean over nodes, as in the report. The round-0 label
histograms (``label_count:<class>``) are left out: the report draws them.

The writers are optional packages, imported on first use (``analysis.to_tensorboard``,
``analysis.to_mlflow``); a missing one is a ``MissingExtra`` naming the pip extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import pandas as pd
import yaml

from analysis.reader import check_roots, find_runs, read_run, run_names
from analysis.series import NODE_MEAN
from decaf_ray.engine.log import NETWORK

# target: (module with write(runs, out) -> None, package it needs, pip extra, default folder)
TARGETS = {
    "tensorboard": ("analysis.to_tensorboard", "tensorboard", "export", "tensorboard"),
    "mlflow": ("analysis.to_mlflow", "mlflow", "mlflow", "mlruns"),
}
LEFT_OUT = ("label_count:",)  # metric prefixes not exported


class MissingExtra(ModuleNotFoundError):
    """The writer package of an export target is not installed."""


@dataclass(frozen=True)
class RunExport:
    """One run to export. ``name``: unique among the exported runs (``reader.run_names``);
    ``experiment``: the name of the folder it was found under (a sweep, or the run itself);
    ``config``: its ``config.yaml``; ``started``: its start, seconds since the epoch;
    ``scalars``: columns tag, step, value, wall_s (seconds since the start)."""

    name: str
    path: Path
    experiment: str
    config: dict
    started: float
    scalars: pd.DataFrame


def scalars(frame: pd.DataFrame, nodes: bool = True) -> pd.DataFrame:
    """The exported series of one run's metrics (columns round, node, metric, value, wall_s):
    rows tag, step, value, wall_s sorted by tag and step. ``nodes``: also ``node/<i>/...``."""
    frame = frame[~frame["metric"].str.startswith(LEFT_OUT)]
    net = frame[frame["node"] == NETWORK]
    per_node = frame[frame["node"] != NETWORK]
    means = (
        per_node[per_node["metric"].isin(NODE_MEAN - set(net["metric"]))]
        .groupby(["metric", "round"], as_index=False)
        .agg(value=("value", "mean"), wall_s=("wall_s", "max"))
    )
    parts = [
        net.assign(tag="network/" + net["metric"].astype(str)),
        means.assign(tag="network/" + means["metric"].astype(str)),
    ]
    if nodes:
        tag = "node/" + per_node["node"].astype(str) + "/" + per_node["metric"].astype(str)
        parts.append(per_node.assign(tag=tag))
    out = pd.concat([p[["tag", "round", "value", "wall_s"]] for p in parts], ignore_index=True)
    out = out.rename(columns={"round": "step"}).astype({"tag": str, "step": int, "value": float})
    return out.sort_values(["tag", "step"], kind="stable", ignore_index=True)


def config_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Every config value as a string parameter, keyed ``section.key``: scalars as YAML spells
    them (true, null, 0.001), lists and empty mappings in YAML flow style (``[4, 8]``, ``{}``)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(config_params(value, f"{prefix}{key}."))
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
            out[f"{prefix}{key}"] = text.removesuffix("\n...\n").strip()
    return out


def load_runs(paths: Sequence[str | Path], nodes: bool = True) -> list[RunExport]:
    """Every run under ``paths`` (run or sweep folders) with the series to export; runs that
    logged nothing yet are left out."""
    roots = check_roots(paths)
    found = [(root, d) for root in roots for d in find_runs(root)]
    runs = []
    for (root, d), name in zip(found, run_names([d for _, d in found])):
        frame = read_run(d, config_columns=())
        if frame.empty:
            continue
        config = yaml.safe_load((d / "config.yaml").read_text()) or {}
        started = (d / "config.yaml").stat().st_mtime  # written as the run starts
        series = scalars(frame, nodes)
        runs.append(RunExport(name, d, root.resolve().name, config, started, series))
    if not runs:
        raise FileNotFoundError(f"the runs under {[str(p) for p in paths]} hold no metrics yet")
    return runs


def check_target(to: str) -> None:
    if to not in TARGETS:
        raise ValueError(f"unknown export target {to!r}: choose one of {', '.join(TARGETS)}")


def _writer(to: str):
    """The ``write`` function of target ``to``; one clear error if it is not installed."""
    module, package, extra, _ = TARGETS[to]
    try:
        return import_module(module).write
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != package:
            raise
        raise MissingExtra(
            f"exporting to {to} needs the {package} package, which is not installed: "
            f"install the {extra} extra: pip install 'decaf-ray[{extra}]'",
            name=package,
        ) from exc


def export(
    paths: Sequence[str | Path], to: str, out_dir: str | Path | None = None, nodes: bool = True
) -> Path:
    """Write every run under ``paths`` for ``to`` (``tensorboard``: one event folder per run;
    ``mlflow``: a file store, one experiment per folder given) into ``out_dir`` (default:
    ``<first path>/tensorboard`` or ``/mlruns``) and return it. Exporting a run again
    replaces its earlier export there. ``nodes``: the per-node series too."""
    check_target(to)
    check_roots(paths)  # the cheap errors first, then the writer's import (seconds)
    write = _writer(to)
    runs = load_runs(paths, nodes)
    out = Path(out_dir) if out_dir is not None else Path(paths[0]) / TARGETS[to][3]
    out.mkdir(parents=True, exist_ok=True)
    write(runs, out)
    return out
