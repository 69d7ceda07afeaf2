"""``decaf-ray bench --scale``: engine cost per node per round as n grows (issue 13).

The tiny random BERT (so the engine, not the model, dominates) runs decaf on a ring at each
size of ``ScaleOptions.nodes``, each node holding ``samples_per_node`` BBC News articles
drawn with overlap (``data.samples_per_node``), so n may exceed the 2,225 articles. Every size
runs in a child process of its own, one after another, under a memory and a time guard
(:mod:`decaf_ray.bench.guard`): a size that outgrows the machine becomes one line saying why.

Per size, over rounds 2.. (round 1 is warm-up; the only evaluation is after the last round,
so ``eval_s`` is that cost spread over the measured rounds), the mean wall seconds of a round
split into the phases the metrics log, ``round_s = train_s + exchange_s + combine_s +
metrics_s + eval_s + driver_s`` (``driver_s``: the rest, the driver's bookkeeping); the
model's own compute ``floor_s``, the slowest host's sum of its nodes' ``node_train_s`` (the
hosts run at once); the engine overhead per node per round, ``(round_s - eval_s - floor_s)
/ n`` in ms (evaluation, n + 1 models' forward passes, is model compute too and is left
out), and the same as a ratio, ``(round_s - eval_s) / floor_s``: measured within the same
rounds, it holds up on a shared machine whose load changes between sizes, where seconds do
not; the driver's peak RSS (``getrusage``, preparation included) and the hosts' PSS. The
growth exponent of ``round_s`` between the two largest sizes that ran is the log-log slope
``log(round_s2 / round_s1) / log(n2 / n1)``; so is that of ``round_in_steps``, the round
less evaluation over one node's mean ``node_train_s`` in the same rounds, which a change of
the machine's load between sizes leaves alone (1: linear in n). Output: ``scale.csv`` and
``scale.txt`` in the bench folder, and each size's run folder (config, metrics, placement)
beside them.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import psutil

from analysis.wall import PHASES, round_split
from decaf_ray.bench.guard import STAGE, run_guarded
from decaf_ray.bench.options import ScaleOptions
from decaf_ray.config import RunConfig, config_from_dict

TARGETS = {"exponent": 1.05, "overhead_ms_per_node": 2.0}  # issue 13, at 16,384 nodes


def scale_config(n: int, opts: ScaleOptions) -> RunConfig:
    """decaf on a ring of ``n`` tiny-BERT nodes, ``opts.samples_per_node`` articles each,
    evaluated (every node and the network average, 16 rows) after the last round only."""
    return config_from_dict(
        {
            "name": f"scale-n{n}",
            "seed": opts.seed,
            "algorithm": {"name": "decaf"},
            "topology": {"name": "ring", "n": n, "mixing": "uniform"},
            "data": {
                "max_samples": None,
                "eval_samples": 16,
                "partition": "iid",
                "samples_per_node": opts.samples_per_node,
                "max_length": opts.max_length,
            },
            "model": {"name": "tiny-bert", "r": 4, "alpha": 8},
            "train": {
                "rounds": opts.rounds,
                "local_steps": opts.local_steps,
                "batch_size": opts.batch_size,
                "lr": 5e-3,
            },
            "eval": {"every": opts.rounds, "batch_size": 64},
            "cluster": {"num_cpus": opts.num_cpus},
            "checkpoint": {"every": 0},
            "output": {"progress": False, "save_adapters": "none"},
        }
    )


SPAN_FROM = 1024  # the exponent: from 1,024 nodes to the largest size


def growth_exponent(
    table: pd.DataFrame, column: str = "round_s", start: int | None = None
) -> float:
    """log-log slope of ``column`` between the two largest sizes that ran, or from size
    ``start`` to the largest (nan if there are not two such sizes)."""
    ran = table[table["status"] == "ok"].sort_values("n")
    if start is not None:
        ran = ran[ran["n"] >= start]
        ran = ran.iloc[[0, -1]] if len(ran) >= 2 and int(ran["n"].iloc[0]) == start else ran[:0]
    if len(ran) < 2:
        return float("nan")
    (n1, t1), (n2, t2) = ran[["n", column]].to_numpy()[-2:]
    return math.log(t2 / t1) / math.log(n2 / n1)


# --------------------------------------------------------------------------- one size (child)


def _stage(what: str) -> None:
    print(STAGE + what, flush=True)


def child_main(run_dir: Path) -> None:
    """Run the config in ``run_dir/config.yaml`` round by round on a local Ray; write
    ``result.json`` (preparation and host set-up seconds, peak RSS, host PSS)."""
    from decaf_ray.bench.overhead import pss_bytes
    from decaf_ray.config import load_config
    from decaf_ray.engine import cluster
    from decaf_ray.engine.executor import Executor
    from decaf_ray.engine.log import MetricsLog
    from decaf_ray.prepare import prepare

    cfg = load_config(run_dir / "config.yaml")
    _stage("prepare (graph, mixing check, shards)")
    t0 = time.perf_counter()
    prep = prepare(cfg)
    prepare_s = time.perf_counter() - t0
    rss_prepared = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _stage("ray start")
    started = cluster.connect(None, cfg.cluster.num_cpus)
    pool = cluster.HostPool()
    try:
        _stage("host start and set-up")
        t0 = time.perf_counter()
        hosts = cluster.start_hosts(cfg, prep, pool)
        setup_s = time.perf_counter() - t0
        placement = hosts.placement()
        (run_dir / "placement.json").write_text(json.dumps({"hosts": placement}, indent=1))
        sim = Executor(cfg, prep, hosts, MetricsLog(run_dir), setup_s)
        for t in range(1, cfg.train.rounds + 1):
            _stage(f"round {t} of {cfg.train.rounds}")
            sim.run(until_round=t)
        host_pss = pss_bytes([int(h["pid"]) for h in placement])
    finally:
        pool.clear()
        if started:
            cluster.shutdown()
    result = {
        "prepare_s": prepare_s,
        "setup_s": setup_s,
        "driver_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "driver_rss_after_prepare_bytes": rss_prepared,
        "host_pss_bytes": host_pss,
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    _stage("done")


# --------------------------------------------------------------------------- the curve


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _size_row(n: int, run_dir: Path, guarded, opts: ScaleOptions) -> dict:
    """The table row of one size: its figures, or why it has none."""
    from analysis import host_blocks, read_run

    row: dict = {"n": n, "status": guarded.status, "reason": guarded.reason}
    row["tree_peak_gib"] = guarded.peak_tree_bytes / 2**30
    row["size_wall_s"] = guarded.wall_s
    if guarded.status != "ok":
        return row
    result = json.loads((run_dir / "result.json").read_text())
    blocks = host_blocks(run_dir)
    split = round_split(read_run(run_dir), blocks)
    row.update(split)
    engine_s = split["round_s"] - split["eval_s"] - split["floor_s"]
    row["overhead_ms_per_node"] = 1e3 * engine_s / n
    row["prepare_s"] = result["prepare_s"]
    row["setup_s"] = result["setup_s"]
    row["driver_peak_rss_mib"] = result["driver_peak_rss_bytes"] / 2**20
    row["driver_rss_after_prepare_mib"] = result["driver_rss_after_prepare_bytes"] / 2**20
    row["hosts_pss_mib"] = result["host_pss_bytes"] / 2**20
    row["hosts"] = len(blocks)
    return row


COLUMNS = (
    "n",
    "status",
    "round_s",
    *PHASES,
    "driver_s",
    "floor_s",
    "overhead_ms_per_node",
    "overhead_ratio",
    "round_in_steps",
    "driver_peak_rss_mib",
    "hosts_pss_mib",
    "prepare_s",
    "setup_s",
    "size_wall_s",
    "tree_peak_gib",
    "reason",
)


def format_scale(table: pd.DataFrame) -> str:
    shown = table.reindex(columns=[c for c in COLUMNS if c in table.columns])
    with pd.option_context(
        "display.width", 250, "display.max_columns", 30, "display.float_format", "{:.4g}".format
    ):
        text = shown.to_string(index=False)
    ran = table[table["status"] == "ok"].sort_values("n")
    sizes = [int(n) for n in ran["n"]]
    spans = [(None, *sizes[-2:])] if len(sizes) >= 2 else []
    if SPAN_FROM in sizes[:-2]:  # the span, where it is not the two largest already
        spans.append((SPAN_FROM, SPAN_FROM, sizes[-1]))
    if spans:
        text += "\n"
    for start, n1, n2 in spans:
        for column, what in (
            ("round_s", "round_s"),
            ("round_in_steps", "round_in_steps (the round less evaluation, in node steps)"),
        ):
            exponent = growth_exponent(table, column, start)
            ok = "meets" if exponent <= TARGETS["exponent"] else "misses"
            text += (
                f"\ngrowth exponent of {what} "
                f"between n={n1} and n={n2}: {exponent:.3f} ({ok} the target <= "
                f"{TARGETS['exponent']})"
            )
    if len(ran):
        big = ran.iloc[-1]
        ok = "meets" if big["overhead_ms_per_node"] <= TARGETS["overhead_ms_per_node"] else "misses"
        text += (
            f"\nengine overhead at n={int(big['n'])}: {big['overhead_ms_per_node']:.3g} ms per "
            f"node per round ({ok} the target <= {TARGETS['overhead_ms_per_node']} ms, set at "
            "n=16384)"
        )
    return text


def run_scale(opts: ScaleOptions) -> tuple[Path, str]:
    """Every size in turn, each in a guarded child; write scale.csv and scale.txt."""
    from decaf_ray.bench.overhead import machine
    from decaf_ray.config import save_config
    from decaf_ray.runner import new_run_dir

    root = new_run_dir(Path(opts.out_dir), f"bench-scale-{time.strftime('%Y%m%d-%H%M%S')}")
    free = psutil.virtual_memory().available
    limit = int(opts.memory_gib * 2**30) if opts.memory_gib else int(0.6 * free)
    header = (
        f"decaf-ray bench --scale on {machine()}\noptions: {opts}\nmemory guard: "
        f"{limit / 2**30:.1f} GiB for a size's process tree ({free / 2**30:.1f} GiB free at "
        f"start); time guard: {opts.timeout_s:.0f} s a size\n"
    )
    _say(header)
    rows = []
    for n in sorted(opts.nodes):
        run_dir = root / f"n{n}"
        run_dir.mkdir()
        save_config(scale_config(n, opts), run_dir / "config.yaml")
        _say(f"n={n}: start")
        guarded = run_guarded(
            [sys.executable, "-m", "decaf_ray.bench.scale", str(run_dir)],
            run_dir / "child.log",
            limit,
            opts.timeout_s,
            echo=lambda stage, n=n: _say(f"  n={n}: {stage}"),
        )
        row = _size_row(n, run_dir, guarded, opts)
        rows.append(row)
        done = (
            f"round {row['round_s']:.2f} s, {row['overhead_ms_per_node']:.2f} ms/node"
            if guarded.status == "ok"
            else row["reason"]
        )
        _say(f"n={n}: {done} ({guarded.wall_s:.0f} s)")
    table = pd.DataFrame(rows)
    table.to_csv(root / "scale.csv", index=False)
    text = header + "\n" + format_scale(table)
    (root / "scale.txt").write_text(text + "\n")
    (root / "options.json").write_text(json.dumps(asdict(opts), indent=1))
    return root, text


if __name__ == "__main__":  # one size, in the child process run_scale starts
    child_main(Path(sys.argv[1]))
