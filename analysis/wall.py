"""Where a run's wall time went: its rounds split into the engine's phases, against the floor.

The executor logs, per round, the wall seconds of each phase (``train_s``, ``exchange_s``,
``combine_s``, ``metrics_s``, ``eval_s``) and of the whole round (``round_wall_s``), and per
node the seconds of its own local steps (``node_train_s``). From those:

- ``driver_s`` is what the phases leave of the round: the driver's bookkeeping;
- ``floor_s`` is the model's own compute: the slowest host's sum of its nodes' steps (the
  hosts run at once), as if the engine cost nothing;
- ``overhead_ratio`` is ``(round_s - eval_s) / floor_s``, both timed within the same rounds,
  so it holds up on a shared machine where seconds do not (evaluation, n + 1 forward passes
  of the model, is model compute too and is left out); 1.0 is bare compute.

Round 1 is warm-up and left out when a run has more than one. With barrier schedules
(``sync``, ``deadline``) the phases are wall seconds; with ``async``/``bounded`` rounds overlap
and they are the hosts' busy seconds, so ``driver_s`` can come out negative there.

>>> from analysis import wall_table
>>> wall_table("runs/out/scale-1024-minilm")     # one row per run
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.reader import find_runs, read_run, run_names

PHASES = ("train_s", "exchange_s", "combine_s", "metrics_s", "eval_s")
COLUMNS = ("round_s", *PHASES, "driver_s", "floor_s", "overhead_ratio", "rounds_measured")


def round_split(frame: pd.DataFrame, blocks: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean seconds per measured round (2.., or 1 when there is one) of each phase, the
    round, the driver's rest and the floor, from one run's metrics ``frame`` (tidy rows)
    and its hosts' node ``blocks`` (``placement.json``)."""
    last = int(frame["round"].max())
    measured = frame[frame["round"] >= (2 if last > 1 else 1)]
    net = measured[measured["node"] == -1].pivot_table(
        index="round", columns="metric", values="value", aggfunc="first"
    )
    if "round_wall_s" not in net:
        raise ValueError("the run logged no round_wall_s: it has no timed rounds")
    out = {p: float(net[p].fillna(0.0).mean()) if p in net else 0.0 for p in PHASES}
    out["round_s"] = float(net["round_wall_s"].mean())
    out["driver_s"] = out["round_s"] - sum(out[p] for p in PHASES)
    steps = measured[(measured["metric"] == "node_train_s") & (measured["node"] >= 0)]
    host_of = {i: k for k, block in enumerate(blocks) for i in block}
    per_host = steps.assign(host=steps["node"].map(host_of)).groupby(["round", "host"]).value
    out["floor_s"] = float(per_host.sum().groupby("round").max().mean())
    out["overhead_ratio"] = (out["round_s"] - out["eval_s"]) / out["floor_s"]
    out["node_step_s"] = float(steps["value"].mean())  # one node's local steps, on average
    # the round without evaluation in units of one node's own steps, timed in the same rounds
    out["round_in_steps"] = (out["round_s"] - out["eval_s"]) / out["node_step_s"]
    out["rounds_measured"] = int(net.shape[0])
    return out


def host_blocks(run_dir: str | Path) -> list[list[int]] | None:
    """Each host's nodes, from the run's ``placement.json`` (None if it has none)."""
    path = Path(run_dir) / "placement.json"
    if not path.exists():
        return None
    return [list(h["nodes"]) for h in json.loads(path.read_text())["hosts"]]


def wall_table(*roots: str | Path) -> pd.DataFrame:
    """One row per run under ``roots`` (run or sweep folders), indexed by run name: the
    columns of :data:`COLUMNS`. Runs without a placement or timed rounds are left out."""
    dirs = [d for r in roots for d in find_runs(r)]
    rows = {}
    for d, name in zip(dirs, run_names(dirs)):
        blocks, frame = host_blocks(d), read_run(d, config_columns=())
        if blocks is None or not len(frame) or "round_wall_s" not in set(frame["metric"]):
            continue
        split = round_split(frame, blocks)
        rows[name] = {c: split[c] for c in COLUMNS}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(COLUMNS)).rename_axis("run")
