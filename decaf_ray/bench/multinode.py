"""A simulated multi-machine run: many tiny-model nodes over a 4-node Ray cluster on one box.

``ray.cluster_utils.Cluster`` starts a head and ``ray_nodes - 1`` more Ray nodes in this
machine (``cpus_per_node`` CPUs each, so the run gets one host per CPU slot, spread over the
Ray nodes by the pool's SPREAD strategy). The run joins it as ``cluster.address`` does, then
the same config runs again on an ordinary single-node local Ray (its own host layout), and
the two metrics tables must agree, wall-clock metrics aside, within the tolerance of the
test that does the same at 4 nodes (``tests/test_cluster.py``: rtol 1e-6, atol 1e-9).

Heavy (minutes): a script, not a test.

    python -m decaf_ray.bench.multinode --nodes 1024 --rounds 2

The simulated cluster requires a token, as local runs do (a fresh one, in this process's
environment only). Exit status 0 when the tables agree and the hosts sat on every Ray node.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from decaf_ray.bench.options import ScaleOptions
from decaf_ray.bench.scale import scale_config
from decaf_ray.config import RunConfig
from decaf_ray.engine.log import WALL_CLOCK

RTOL, ATOL = 1e-6, 1e-9


def values(frame: pd.DataFrame) -> pd.Series:
    """A run's values by (round, node, metric), wall-clock metrics left out."""
    keep = frame[~frame["metric"].isin(WALL_CLOCK)]
    return keep.set_index(["round", "node", "metric"])["value"].sort_index()


def compare(multi: pd.DataFrame, single: pd.DataFrame) -> str:
    """'' when the two runs' values agree within RTOL / ATOL, else what differs."""
    a, b = values(multi), values(single)
    if not a.index.equals(b.index):
        only = a.index.symmetric_difference(b.index)
        return f"{len(only)} rows in one run only, e.g. {list(only[:3])}"
    bad = (a - b).abs() > ATOL + RTOL * b.abs()
    if bad.any():
        worst = ((a - b).abs() / b.abs().clip(lower=ATOL))[bad].sort_values().index[-1]
        return f"{int(bad.sum())} values differ, worst {worst}: {a[worst]!r} vs {b[worst]!r}"
    return ""


def _run(cfg: RunConfig, out: Path) -> tuple[pd.DataFrame, list[dict], float]:
    from decaf_ray.engine.log import read_metrics
    from decaf_ray.runner import run

    t0 = time.perf_counter()
    run(cfg, out)
    wall_s = time.perf_counter() - t0
    run_dir = next(p.parent for p in out.rglob("placement.json"))
    hosts = json.loads((run_dir / "placement.json").read_text())["hosts"]
    return read_metrics(run_dir / "metrics.parquet"), hosts, wall_s


def run_multinode(n: int, rounds: int, ray_nodes: int, cpus_per_node: int, out: Path) -> dict:
    """Both runs; a report of where the hosts sat, the wall times and the comparison."""
    from decaf_ray.engine.cluster import simulated_cluster

    cfg = scale_config(n, replace(ScaleOptions(), rounds=rounds))
    cfg = replace(cfg, name=f"multinode-n{n}")
    with simulated_cluster(ray_nodes, cpus_per_node) as (address, node_ids):
        on_cluster = replace(cfg, cluster=replace(cfg.cluster, address=address))
        multi, hosts, multi_s = _run(on_cluster, out / "cluster")
    single, local_hosts, single_s = _run(cfg, out / "single")
    return {
        "nodes": n,
        "rounds": rounds,
        "ray_nodes": len(node_ids),
        "hosts": len(hosts),
        "ray_nodes_used": len({h["ray_node"] for h in hosts}),
        "hosts_per_ray_node": pd.Series([h["ray_node"] for h in hosts]).value_counts().tolist(),
        "single_node_hosts": len(local_hosts),
        "cluster_wall_s": multi_s,
        "single_wall_s": single_s,
        "rows_compared": int(len(values(multi))),
        "difference": compare(multi, single),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m decaf_ray.bench.multinode", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--nodes", type=int, default=1024, help="simulated (tiny-model) nodes")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ray-nodes", type=int, default=4, help="Ray nodes of the cluster")
    p.add_argument("--cpus-per-node", type=int, default=1, help="CPUs of each Ray node")
    p.add_argument("--out", default="runs/out", help="parent of the result folder")
    args = p.parse_args(argv)
    from decaf_ray.runner import new_run_dir

    out = new_run_dir(Path(args.out), f"multinode-{time.strftime('%Y%m%d-%H%M%S')}")
    report = run_multinode(args.nodes, args.rounds, args.ray_nodes, args.cpus_per_node, out)
    (out / "multinode.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    ok = not report["difference"] and report["ray_nodes_used"] == report["ray_nodes"]
    print(
        f"{'PASS' if ok else 'FAIL'}: {args.nodes} nodes on {report['hosts']} hosts over "
        f"{report['ray_nodes_used']} of {report['ray_nodes']} Ray nodes "
        f"({report['cluster_wall_s']:.0f} s) vs {report['single_node_hosts']} hosts on one "
        f"({report['single_wall_s']:.0f} s): "
        + (report["difference"] or f"{report['rows_compared']} values agree")
        + f"; results in {out}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
