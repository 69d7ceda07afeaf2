"""Run one config (or a sweep of them): prepare data, start Ray, simulate, summarise.

This is what ``decaf-ray run`` calls. Each run gets its own folder holding ``config.yaml``
(the fully resolved config), ``metrics.parquet`` and ``placement.json``; a sweep shares one Ray
cluster and one pool of warm hosts between its runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from decaf_ray.config import RunConfig, expand_sweep, save_config, to_dict
from decaf_ray.engine.executor import Executor
from decaf_ray.engine.log import NETWORK, MetricsLog
from decaf_ray.engine.saving import save_adapters
from decaf_ray.engine.stopping import RunStopped
from decaf_ray.prepare import Prepared, prepare
from decaf_ray.rundir import claim

if TYPE_CHECKING:
    from decaf_ray.engine.cluster import HostPool


def new_run_dir(base: Path, name: str) -> Path:
    """``base/name``, or ``base/name-2``, ``-3``... if taken: never overwrite results."""
    path, k = base / name, 1
    while path.exists():
        k += 1
        path = base / f"{name}-{k}"
    path.mkdir(parents=True)
    return path


def run_one(
    cfg: RunConfig, run_dir: Path, pool: HostPool, prep: Prepared | None = None
) -> pd.DataFrame:
    """Simulate ``cfg`` into ``run_dir`` on Ray hosts from ``pool``; return its metrics."""
    from decaf_ray.engine.cluster import start_hosts

    with claim(run_dir):
        save_config(cfg, run_dir / "config.yaml")
        prep = prep or prepare(cfg)
        log = MetricsLog(run_dir)
        t0 = time.perf_counter()
        hosts = start_hosts(cfg, prep, pool)
        setup_s = time.perf_counter() - t0
        placement = hosts.placement()
        (run_dir / "placement.json").write_text(json.dumps({"hosts": placement}, indent=1))
        sim = Executor(cfg, prep, hosts, log, setup_s)
        sim.run()
        save_adapters(cfg, sim.final_states(), hosts, run_dir)
        return log.frame()


def summarise(frame: pd.DataFrame) -> dict[str, float]:
    """Final whole-network figures of one run."""
    net = frame[frame["node"] == NETWORK]
    last = net.sort_values("round").groupby("metric")["value"].last()
    per_round = net[
        net["metric"].isin(["train_s", "exchange_s", "combine_s", "metrics_s", "eval_s"])
    ]
    walls = net[net["metric"] == "round_wall_s"]  # absent from runs of older versions
    out = {
        "rounds": int(frame["round"].max()),
        "mean_node_acc": float(last.get("mean_node_acc", float("nan"))),
        "avg_model_acc": float(last.get("eval_acc", float("nan"))),
        "product_consensus": float(last.get("product_consensus", float("nan"))),
        "train_loss": float(last.get("train_loss", float("nan"))),
        "sec_per_round": float(
            walls["value"].mean()
            if len(walls)
            else per_round.groupby("round")["value"].sum().mean()
        ),
        "virtual_s": float(last.get("virtual_s", float("nan"))),
    }
    for key, name in (("mean_node_f1", "mean_node_f1"), ("eval_ppl", "avg_model_ppl")):
        if key in last:  # macro-F1 of classification tasks; perplexity of causal LMs
            out[name] = float(last[key])
    return out


def prepare_all(configs: list[RunConfig]) -> list[Prepared]:
    """``prepare`` each config once per distinct graph, data, model and seed (sweeps over the
    algorithm or the schedule share one tokenised partition)."""
    cache: dict[str, Prepared] = {}
    out = []
    for c in configs:
        parts = (c.topology, c.data, c.model, c.task)
        key = repr((*map(to_dict, parts), c.eval.on, c.schedule.graph, c.train.rounds, c.seed))
        if key not in cache:
            cache[key] = prepare(c)
        out.append(cache[key])
    return out


def run(cfg: RunConfig, out: Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Run ``cfg`` and every sweep combination; return the folder and a summary table."""
    configs = expand_sweep(cfg)
    preps = prepare_all(configs)  # every bad input fails here, before Ray starts
    base = Path(out) if out else Path(cfg.output.dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = new_run_dir(base, f"{cfg.name}-{stamp}") if out is None else base
    with claim(root):  # a folder that holds a run, or is being written, is refused here
        try:
            return _run_all(configs, preps, root, cfg)
        except RunStopped as stop:
            stop.folder = root
            raise


def _run_all(
    configs: list[RunConfig], preps: list[Prepared], root: Path, cfg: RunConfig
) -> tuple[Path, pd.DataFrame]:
    from decaf_ray.engine import cluster  # Ray enters here, after every input is checked

    started = cluster.connect(cfg.cluster.address, cfg.cluster.num_cpus)
    pool = cluster.HostPool()
    rows = []
    try:
        for c, prep in zip(configs, preps):
            run_dir = new_run_dir(root, c.name) if len(configs) > 1 else root
            frame = run_one(c, run_dir, pool, prep)
            rows.append({"run": c.name, "algorithm": c.algorithm.name, **summarise(frame)})
            table = pd.DataFrame(rows).set_index("run")
            table.to_csv(root / "summary.csv")  # rewritten after each run: a failure keeps it
    finally:
        pool.clear()
        if started:
            cluster.shutdown()
    return root, table
