"""Read the tidy metrics of runs, with each run's config values as extra columns.

>>> from analysis import read_runs
>>> df = read_runs("runs/out/demo-20261125-170000")    # a sweep folder or a single run
>>> df[df.metric == "product_consensus"].pivot_table(
...     index="round", columns="algorithm.name", values="value")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import yaml

from decaf_ray.engine.log import read_metrics


def find_runs(root: str | Path) -> list[Path]:
    """Every run folder (one holding config.yaml and metrics.parquet) under ``root``."""
    root = Path(root)
    return sorted(
        p.parent for p in root.rglob("metrics.parquet") if (p.parent / "config.yaml").exists()
    )


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config dict -> {"section.key": value} of its scalar values (lists left out)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, (dict, list)):
            out[f"{prefix}{k}"] = v
    return out


def check_roots(paths: Sequence[str | Path]) -> list[Path]:
    """The folders as paths; one clear error for none, one that is missing or holds no run."""
    if not paths:
        raise ValueError("name at least one run or sweep folder")
    roots = [Path(p) for p in paths]
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{str(root)!r} does not exist")
        if not find_runs(root):
            raise FileNotFoundError(
                f"{str(root)!r} holds no runs (a run folder holds config.yaml and "
                "metrics.parquet, as 'decaf-ray run' writes them)"
            )
    return roots


def read_run(run_dir: str | Path, config_columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Metrics of one run plus its config values (all scalar ones, or those named)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.parquet").exists():
        raise FileNotFoundError(f"{str(run_dir)!r} holds no metrics.parquet: is it a run folder?")
    frame = read_metrics(run_dir / "metrics.parquet")
    cfg = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    if config_columns is not None:
        cfg = {k: cfg[k] for k in config_columns}
    frame = frame.assign(run=run_dir.name, **cfg)
    return frame.sort_values(["round", "metric", "node"], kind="stable").reset_index(drop=True)


def run_names(dirs: list[Path]) -> list[str]:
    """Each run's folder name; where two runs share one (two sweeps of one config), the
    paths of those runs below the folder common to all, e.g. ``demo-20261201-0955/demo-decaf``."""
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    base = Path(os.path.commonpath([d.resolve() for d in dirs]))
    return [
        d.resolve().relative_to(base).as_posix() if names.count(d.name) > 1 else d.name
        for d in dirs
    ]


def read_runs(*roots: str | Path, config_columns: Iterable[str] | None = None) -> pd.DataFrame:
    """All runs under the given folders in one long frame; runs with no rows yet (stopped
    before their first round) are left out. The ``run`` column tells runs apart (see
    ``run_names``)."""
    dirs = [d for r in roots for d in find_runs(r)]
    if not dirs:
        raise FileNotFoundError(f"no run folders under {[str(r) for r in roots]}")
    frames = []
    for d, name in zip(dirs, run_names(dirs)):
        frame = read_run(d, config_columns)
        if len(frame):
            frames.append(frame.assign(run=name))
    if not frames:
        raise FileNotFoundError(f"the runs under {[str(r) for r in roots]} hold no metrics yet")
    return pd.concat(frames, ignore_index=True)
