"""Run one config (or a sweep of them): prepare data, start Ray, simulate, summarise.

This is what ``decaf-ray run`` calls. Each run gets its own folder holding ``config.yaml``
(the fully resolved config), ``metrics.parquet`` and ``placement.json``; a sweep shares one Ray
cluster and one pool of warm hosts between its runs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from decaf_ray.config import RunConfig, expand_sweep, load_config, save_config, to_dict
from decaf_ray.engine import checkpoint
from decaf_ray.engine.executor import Executor
from decaf_ray.engine.hosts import HostError
from decaf_ray.engine.log import NETWORK, MetricsLog, read_metrics
from decaf_ray.engine.saving import save_adapters
from decaf_ray.engine.stopping import RunStopped
from decaf_ray.prepare import Prepared, prepare
from decaf_ray.rundir import RunDirError, check_writable, claim

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
    cfg: RunConfig,
    run_dir: Path,
    pool: HostPool,
    prep: Prepared | None = None,
    resume: bool = False,
) -> pd.DataFrame:
    """Simulate ``cfg`` into ``run_dir`` on Ray hosts from ``pool``; return its metrics.

    ``resume``: ``run_dir`` holds this run, stopped; go on from its latest checkpoint (or
    from the start if it has none), redoing only what came after it. A host that dies or
    hangs is recovered the same way: every host restarts from the latest checkpoint, up to
    ``cluster.restarts`` times; the metrics are those of an undisturbed run."""
    with claim(run_dir, resume=resume):
        _save_run_config(cfg, run_dir / "config.yaml", resume)
        prep = prep or prepare(cfg)
        restarts = 0
        while True:
            try:
                return _simulate(cfg, run_dir, pool, prep, resume or restarts > 0)
            except HostError as exc:
                exc.folder = run_dir
                if not exc.lost or restarts >= cfg.cluster.restarts:
                    raise
                restarts += 1
                meta = checkpoint.latest_meta(run_dir)
                since = f"its checkpoint of round {meta['round']}" if meta else "the start"
                print(
                    f"decaf-ray: {exc}\ndecaf-ray: restarting every host of {cfg.name} from "
                    f"{since} (restart {restarts} of cluster.restarts={cfg.cluster.restarts})",
                    file=sys.stderr,
                )
                pool.clear()


def _save_run_config(cfg: RunConfig, path: Path, resume: bool) -> None:
    """Write the run's config; a resume (which may have changed ``train.rounds``) keeps the
    file's first modification time, which tells when the run started (the exports' clock)."""
    first = path.stat() if resume and path.exists() else None
    save_config(cfg, path)
    if first is not None:
        os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))


def _simulate(
    cfg: RunConfig, run_dir: Path, pool: HostPool, prep: Prepared, from_checkpoint: bool
) -> pd.DataFrame:
    from decaf_ray.engine.cluster import start_hosts

    t0 = time.perf_counter()
    saved = checkpoint.latest(run_dir) if from_checkpoint else None
    read_s = time.perf_counter() - t0
    log = MetricsLog(run_dir, keep_parts=saved.parts if saved else 0)
    t0 = time.perf_counter()
    hosts = start_hosts(cfg, prep, pool)
    setup_s = time.perf_counter() - t0
    placement = hosts.placement()
    (run_dir / "placement.json").write_text(json.dumps({"hosts": placement}, indent=1))
    sim = Executor(cfg, prep, hosts, log, setup_s)
    if saved:
        t0 = time.perf_counter()
        hosts.restore(saved.nodes)
        hosts.restore_base(saved.base)
        sim.restore(saved.book, saved.values)
        print(
            f"decaf-ray: {cfg.name} goes on after round {saved.round_idx} (checkpoint read in "
            f"{read_s:.1f} s, restored in {time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
        del saved  # the driver's copy of every adapter: free it before the run goes on
        checkpoint.release_heap()
    sim.run(checkpoint=lambda t: save_checkpoint(cfg, sim, run_dir, t))
    save_adapters(cfg, sim.final_states(), hosts, run_dir, sim.rank)
    return log.frame()


def save_checkpoint(cfg: RunConfig, sim: Executor, run_dir: Path, round_idx: int) -> Path:
    """Checkpoint ``sim`` between rounds; its write time and size become the metrics
    ``checkpoint_s`` and ``checkpoint_mb`` of the round, in a part of their own (the
    checkpoint counts that part as written: its rows describe the checkpoint itself)."""
    t0 = time.perf_counter()
    sim.log.flush()
    folder = checkpoint.save(
        run_dir,
        to_dict(cfg),
        round_idx,
        round_idx == sim.plan.last_round,
        sim.hosts.snapshots(),  # host by host: one host's share on the driver at a time
        sim.held_values(),
        sim.bookkeeping(),
        sim.log.parts + 1,
        cfg.checkpoint.keep,
        sim.hosts.base_snapshot(),
    )
    checkpoint.release_heap()  # the snapshots above are freed: give their pages back
    when = sim.plan.round_end_s(round_idx)
    sim.log.add(round_idx, NETWORK, "checkpoint_s", time.perf_counter() - t0, when)
    sim.log.add(round_idx, NETWORK, "checkpoint_mb", checkpoint.size_bytes(folder) / 2**20, when)
    sim.log.flush()
    return folder


def summarise(frame: pd.DataFrame) -> dict[str, float]:
    """Final whole-network figures of one run (``sent_mb``: the bytes every node sent in every
    round, in MiB)."""
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
        "sent_mb": float(frame.loc[frame["metric"] == "bytes_sent", "value"].sum() / 2**20),
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
        pooled = c.algorithm.name == "centralized"  # one shard of every node's rows
        key = repr((*map(to_dict, parts), c.eval.on, c.schedule.graph, c.train.rounds, c.seed))
        key += " pooled" if pooled else ""
        if key not in cache:
            cache[key] = prepare(c)
        out.append(cache[key])
    return out


def run(
    cfg: RunConfig, out: Path | None = None, pool: HostPool | None = None
) -> tuple[Path, pd.DataFrame]:
    """Run ``cfg`` and every sweep combination; return the folder and a summary table.

    ``pool``: warm hosts on a Ray already connected (a test session's), used and left warm;
    without it the run starts (or joins) Ray and a pool of its own, and stops both after."""
    configs = expand_sweep(cfg)
    base = Path(out) if out else Path(cfg.output.dir)
    check_writable(base)
    preps = prepare_all(configs)  # every bad input fails here, before Ray starts
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = new_run_dir(base, f"{cfg.name}-{stamp}") if out is None else base
    with claim(root):  # a folder that holds a run, or is being written, is refused here
        if len(configs) > 1:  # the sweep itself, so that `decaf-ray resume` can finish it
            save_config(cfg, root / "sweep.yaml")
        return _run_all(configs, preps, root, cfg, resume=False, pool=pool)


def resume(
    folder: Path, overrides: list[str] = (), pool: HostPool | None = None
) -> tuple[Path, pd.DataFrame]:
    """Go on with the stopped run (or sweep) in ``folder``: each run from its latest
    checkpoint, a sweep's finished runs skipped and its unstarted ones started. ``overrides``
    may change only :data:`~decaf_ray.engine.checkpoint.MAY_CHANGE` keys (e.g.
    ``train.rounds`` to extend a finished run). ``pool``: as in :func:`run`."""
    folder = Path(folder)
    sweep = folder / "sweep.yaml"
    source = sweep if sweep.exists() else folder / "config.yaml"
    if not source.exists():
        raise RunDirError(
            f"{str(folder)!r} holds no run to resume (no config.yaml or sweep.yaml): give the "
            "folder that `decaf-ray run` printed"
        )
    cfg = load_config(source, list(overrides))
    check_writable(folder)
    configs = expand_sweep(cfg)
    dirs = [folder / c.name for c in configs] if sweep.exists() else [folder]
    todo = [(c, d) for c, d in zip(configs, dirs) if not _finished(c, d)]
    preps = prepare_all([c for c, _ in todo])  # every bad input fails here, before Ray starts
    with claim(folder, resume=True):
        return _run_all(configs, preps, folder, cfg, resume=True, pool=pool)


def _finished(cfg: RunConfig, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds ``cfg``'s run complete; refuse one made with another config
    (keys a resume may change aside), naming the keys that differ."""
    meta = checkpoint.latest_meta(run_dir)
    if meta is None:
        return False
    changed = checkpoint.changed_keys(meta["config"], to_dict(cfg))
    fixed = [k for k in changed if k not in checkpoint.MAY_CHANGE]
    if fixed:
        raise RunDirError(
            f"cannot resume {str(run_dir)!r} with a changed config: {', '.join(fixed)} "
            f"differ from its checkpoint of round {meta['round']} (a resume may change only "
            f"{', '.join(checkpoint.MAY_CHANGE)}): start a new run instead"
        )
    if "train.rounds" in changed:
        if cfg.train.rounds < meta["round"]:
            raise RunDirError(
                f"train.rounds={cfg.train.rounds} is before the checkpoint of round "
                f"{meta['round']} in {str(run_dir)!r}: a resume can only go forward"
            )
        if cfg.train.lr_schedule != "constant":
            raise RunDirError(
                f"train.rounds may change on resume only with train.lr_schedule=constant "
                f"(the {cfg.train.lr_schedule!r} schedule depends on the number of rounds)"
            )
    return meta["round"] >= cfg.train.rounds and meta["complete"]


def _run_all(
    configs: list[RunConfig],
    preps: list[Prepared],
    root: Path,
    cfg: RunConfig,
    resume: bool,
    pool: HostPool | None = None,
) -> tuple[Path, pd.DataFrame]:
    """Run each config (resume: each unfinished one, in place) and write summary.csv; on
    ``pool`` if given (left warm), else on a pool of its own, started at the first run."""
    from decaf_ray.engine import cluster  # Ray enters here, after every input is checked

    sweep = len(configs) > 1
    rows = []
    preps_left = iter(preps)
    started, own = False, pool is None
    try:
        for c in configs:
            run_dir = (root / c.name if resume else new_run_dir(root, c.name)) if sweep else root
            if resume and _finished(c, run_dir):
                frame = read_metrics(run_dir / "metrics.parquet")
                print(f"decaf-ray: {c.name} is complete: kept as it is", file=sys.stderr)
            else:
                if pool is None:
                    started = cluster.connect(cfg.cluster.address, cfg.cluster.num_cpus)
                    pool = cluster.HostPool()
                prep = next(preps_left)
                frame = run_one(c, run_dir, pool, prep, resume=resume and run_dir.exists())
            swept = {k: _value(c, k) for k in swept_columns(cfg.sweep)}
            row = {"run": c.name, "algorithm": c.algorithm.name, **swept, "seed": c.seed}
            rows.append({**row, **summarise(frame)})
            table = pd.DataFrame(rows).set_index("run")
            table.to_csv(root / "summary.csv")  # rewritten after each run: a failure keeps it
    except RunStopped as stop:
        stop.folder = root
        raise
    finally:
        if own and pool is not None:
            pool.clear()
        if started:
            cluster.shutdown()
    seeds = over_seeds(table)
    if seeds is not None:
        seeds.to_csv(root / "summary_seeds.csv")
        return root, seeds
    return root, table


def swept_columns(sweep: dict[str, list]) -> list[str]:
    """The summary's columns for a sweep's keys (method and seed aside, which have their own):
    a key whose values are mappings gives one column per key they set (``model`` swept as
    ``[{r: 2, alpha: 4}, ...]``: ``model.r``, ``model.alpha``), so every cell is one value."""
    cols: list[str] = []
    for key, values in sweep.items():
        if key in ("algorithm.name", "seed"):
            continue
        subs = [f"{key}.{sub}" for v in values if isinstance(v, dict) for sub in v]
        cols += [c for c in dict.fromkeys(subs) if c not in cols] if subs else [key]
    return cols


def _value(cfg: RunConfig, dotted: str):
    value = to_dict(cfg)
    for key in dotted.split("."):
        value = value[key]
    return value


SEED_COLUMNS = ("mean_node_acc", "mean_node_f1", "avg_model_acc", "product_consensus")


def over_seeds(table: pd.DataFrame) -> pd.DataFrame | None:
    """Mean, std and count over seeds of the summary's main figures, per combination of the
    other swept values (None unless some combination ran with several seeds)."""
    keys = [c for c in table.columns[: list(table.columns).index("seed")]]
    if table.groupby(keys)["seed"].nunique().max() < 2:
        return None
    cols = [c for c in SEED_COLUMNS if c in table.columns]
    out = table.groupby(keys, sort=False)[cols].agg(["mean", "std", "count"])
    out.columns = [f"{c}_{stat}" if stat != "count" else f"{c}_n" for c, stat in out.columns]
    n = out.pop(f"{cols[0]}_n")
    out = out.drop(columns=[c for c in out.columns if c.endswith("_n")])
    return out.assign(seeds=n)
