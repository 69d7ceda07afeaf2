"""Checkpoints and resume: a run stopped anywhere goes on to exactly the metrics of a run that
never stopped, in every schedule mode; a changed config is refused by name."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import comparable, tiny_config
from decaf_ray.cli import main
from decaf_ray.config import to_dict
from decaf_ray.engine import checkpoint
from decaf_ray.engine.executor import Executor
from decaf_ray.engine.local import start_local_hosts
from decaf_ray.engine.log import MetricsLog, read_metrics
from decaf_ray.prepare import prepare
from decaf_ray.runner import resume

REPO = Path(__file__).resolve().parents[1]


MODES = {
    "sync": {},
    "deadline": {"schedule__mode": "deadline", "schedule__deadline_s": 2.5,
                 "schedule__compute": "factors", "schedule__factors": [1, 1, 1, 3]},
    "async": {"schedule__mode": "async", "schedule__compute": "factors",
              "schedule__factors": [1, 2, 1, 3]},
    "bounded-churn": {"schedule__mode": "bounded", "schedule__staleness": 1,
                      "schedule__compute": "factors", "schedule__factors": [1, 2, 1, 3],
                      "schedule__churn": [[1, 2, 4]]},
    "fedavg": {"algorithm__name": "fedavg"},
    "flora": {"algorithm__name": "flora"},  # the merged base, saved once, restored on each host
    "ranks": {"model__ranks": [2, 4, 2, 4], "schedule__mode": "async",
              "schedule__compute": "factors", "schedule__factors": [1, 2, 1, 3]},
    "async-int8": {"schedule__mode": "async", "schedule__compute": "factors",
                   "schedule__factors": [1, 2, 1, 3], "exchange__compress": "int8"},
    "async-topk-choco": {"algorithm__name": "dlora", "schedule__mode": "async",
                         "schedule__compute": "factors", "schedule__factors": [1, 2, 1, 3],
                         "exchange__compress": "topk", "exchange__error_feedback": True},
    "dlora_fa": {"algorithm__name": "dlora_fa", "schedule__mode": "async",
                 "schedule__compute": "factors", "schedule__factors": [1, 2, 1, 3]},
}  # fmt: skip


@pytest.mark.parametrize("mode", list(MODES))
def test_a_restored_executor_goes_on_exactly(tmp_path, mode):
    """Run 5 rounds; separately run 2, checkpoint to disk, rebuild everything (new hosts, new
    executor) from the files, run the rest: the metrics tables are equal value for value."""
    cfg = tiny_config(train__rounds=5, eval__every=2, **MODES[mode])
    prep = prepare(cfg)
    whole = Executor(cfg, prep, start_local_hosts(cfg, prep), MetricsLog(tmp_path / "whole"))
    whole.run()

    first = Executor(cfg, prep, start_local_hosts(cfg, prep), MetricsLog(tmp_path / "cut"))
    first.run(until_round=2)
    if mode == "async":  # the overlap of rounds is real: some node has run ahead of round 2
        assert max(r for (_, r) in first.held_values()["states"]) > 2
    nodes, values, book = first.hosts.snapshot(), first.held_values(), first.bookkeeping()
    base = first.hosts.base_snapshot()
    assert bool(base) == (mode == "flora")
    saved = checkpoint.save(
        tmp_path / "cut", to_dict(cfg), 2, False, nodes, values, book, 9, 1, base
    )
    first.log.flush()
    parts = first.log.parts
    del first

    back = checkpoint.load(saved)
    assert back.round_idx == 2 and set(back.nodes) == set(range(cfg.topology.n))
    hosts = start_local_hosts(cfg, prep)
    second = Executor(cfg, prep, hosts, MetricsLog(tmp_path / "cut", keep_parts=parts))
    hosts.restore(back.nodes)
    hosts.restore_base(back.base)
    second.restore(back.book, back.values)
    second.run()
    got, want = read_metrics(tmp_path / "cut" / "metrics.parquet"), whole.log.frame()
    assert got["round"].max() == 5
    pd.testing.assert_frame_equal(comparable(got), comparable(want))


def test_checkpoints_are_whole_pruned_and_versioned(tmp_path):
    cfg = tiny_config()
    prep = prepare(cfg)
    sim = Executor(cfg, prep, start_local_hosts(cfg, prep), MetricsLog(tmp_path))
    sim.run(until_round=1)
    args = (to_dict(cfg), 1, False, sim.hosts.snapshot(), sim.held_values(), sim.bookkeeping(), 3)
    for r in (1, 2, 3):
        checkpoint.save(tmp_path, args[0], r, *args[2:], keep=2)
    assert checkpoint.saved_rounds(tmp_path) == [2, 3]  # the oldest pruned
    (tmp_path / "checkpoints" / ".round-000004.tmp").mkdir()  # a write killed half-way
    assert checkpoint.latest(tmp_path).round_idx == 3
    meta = tmp_path / "checkpoints" / "round-000003" / "meta.json"
    meta.write_text(meta.read_text().replace(f'"version": {checkpoint.VERSION}', '"version": 99'))
    with pytest.raises(checkpoint.CheckpointError, match="version 99"):
        checkpoint.latest(tmp_path)


def test_a_checkpoint_writes_each_hosts_nodes_apart_and_reads_format_1(tmp_path):
    """A few nodes at a time (what a run saves): one nodes file per run of a host's nodes,
    each fetched only once the previous one is written; read back they are every node's
    snapshot. A format-1 checkpoint (one nodes file) reads the same."""
    import json

    cfg = tiny_config(topology__n=6)
    prep = prepare(cfg)
    hosts = start_local_hosts(cfg, prep)
    assert len(hosts.blocks) == 2
    sim = Executor(cfg, prep, hosts, MetricsLog(tmp_path))
    sim.run(until_round=1)
    fetched = []

    def one_at_a_time():
        for block in hosts.snapshots(nodes=2):
            fetched.append(sorted(block))
            yield block

    args = (sim.held_values(), sim.bookkeeping(), 3, 1)
    folder = checkpoint.save(tmp_path, to_dict(cfg), 1, False, one_at_a_time(), *args)
    runs = [sorted(b[s : s + 2]) for b in hosts.blocks for s in range(0, len(b), 2)]
    assert fetched == runs and len(runs) == 4
    assert sorted(p.name for p in folder.glob("nodes*")) == [
        f"nodes-{k:04d}.safetensors" for k in range(4)
    ]
    want = hosts.snapshot()

    def same(back):
        assert set(back.nodes) == set(want)
        for i, (tensors, meta) in want.items():
            assert back.nodes[i][1] == json.loads(json.dumps(meta))
            assert set(back.nodes[i][0]) == set(tensors)
            for name, t in tensors.items():
                assert torch.equal(back.nodes[i][0][name], t), (i, name)

    same(checkpoint.load(folder))
    old = checkpoint.save(tmp_path / "v1", to_dict(cfg), 1, False, want, *args)
    (old / "nodes-0000.safetensors").rename(old / "nodes.safetensors")
    meta = old / "meta.json"
    meta.write_text(meta.read_text().replace(f'"version": {checkpoint.VERSION}', '"version": 1'))
    same(checkpoint.load(old))


def test_a_node_snapshot_round_trips_its_whole_future(tmp_path):
    """Optimizer moments, sampler order and generator: after restore, a node trains exactly as
    it would have from the snapshot."""
    from conftest import host_of

    host, _ = host_of(tiny_config())
    host.train(1)
    snap = host.snapshot([0, 1])
    after = host.train(2)
    host.train(3)
    host.restore(snap)
    again = host.train(2)
    for i in (0, 1):
        assert again[i].loss == after[i].loss
        for key, x in after[i].adapter.B.items():
            assert (again[i].adapter.B[key] == x).all()


def test_changed_keys_names_nested_differences():
    a = {"train": {"lr": 1e-3, "rounds": 5}, "seed": 1}
    b = {"train": {"lr": 2e-3, "rounds": 5}, "seed": 1, "new": 0}
    assert checkpoint.changed_keys(a, b) == ["new", "train.lr"]


# ------------------------------------------------------------------ the command line


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "decaf_ray.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_then_resume_gives_the_uninterrupted_metrics(tmp_path, run_tiny, pool, capsys):
    """The CLI is killed with SIGKILL (no chance to clean up) after its checkpoint of round 2;
    a resume goes on from it, and the whole table equals an uninterrupted run's. Then: a
    changed config is refused by name, a finished run is left alone, and growing
    train.rounds extends the run to what a longer run gives. Only the killed run has a
    process and a Ray of its own: the rest runs here, on the session's warm hosts, through
    ``decaf-ray resume``'s own code (``main``; ``runner.resume`` given the pool). Random
    compute times and churn: the longer run must keep the first rounds' draws."""
    drawn = dict(schedule__compute="lognormal", schedule__churn_p=0.2)
    cfg = tiny_config(
        train__rounds=5, checkpoint__every=2, schedule__debug_sleep_s={0: 0.4}, **drawn
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / "out"
    proc = _cli("run", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress")
    deadline = time.time() + 600  # start-ups take minutes on a busy machine
    while time.time() < deadline and not checkpoint.saved_rounds(out) and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)  # into round 3, mid-flight
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert checkpoint.saved_rounds(out) == [2]
    assert read_metrics(out / "metrics.parquet")["round"].max() < 5

    longer = comparable(run_tiny(train__rounds=6, checkpoint__every=2, **drawn))  # every round is
    first5 = longer[longer["round"] <= 5].reset_index(drop=True)  # evaluated: a prefix
    capsys.readouterr()
    started = (out / "config.yaml").stat().st_mtime_ns
    n_kept = checkpoint.latest_meta(out)["parts"]  # parts the checkpoint counts; the rest
    kept = _parts(out, range(n_kept))  # are redone by the resume
    resume(out, pool=pool)
    assert "t goes on after round 2 (checkpoint read" in capsys.readouterr().err
    got = read_metrics(out / "metrics.parquet")
    pd.testing.assert_frame_equal(comparable(got), first5)
    # the run's clock goes on across the resume: rows after the checkpoint come later than
    # every kept row, and config.yaml still tells when the run started (the exports' clock)
    redone = _parts(out, range(n_kept, len(list((out / "metrics.parquet").glob("part-*")))))
    assert len(redone) and redone["wall_s"].min() >= kept["wall_s"].max()
    assert (out / "config.yaml").stat().st_mtime_ns == started
    assert checkpoint.latest_meta(out)["complete"]
    assert (out / "adapters" / "average" / "adapter_model.safetensors").exists()

    parts = sorted(p.name for p in (out / "metrics.parquet").iterdir())
    assert main(["resume", str(out), "--set", "train.lr=0.1", "--set", "seed=4"]) == 2
    err = _own_lines(capsys.readouterr().err)
    assert "seed, train.lr differ" in err[0] and len(err) == 1
    assert sorted(p.name for p in (out / "metrics.parquet").iterdir()) == parts
    assert main(["resume", str(out)]) == 0  # no Ray: nothing is left to run
    assert "complete: kept as it is" in capsys.readouterr().err

    resume(out, ["train.rounds=6"], pool=pool)
    pd.testing.assert_frame_equal(comparable(read_metrics(out / "metrics.parquet")), longer)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["rounds"] == 6


def _parts(run_dir, ks) -> pd.DataFrame:
    """Metrics parts ``ks`` of a run folder, as one table."""
    return pd.concat(
        [pd.read_parquet(run_dir / "metrics.parquet" / f"part-{k:06d}.parquet") for k in ks]
    )


def _own_lines(err: str) -> list[str]:
    """The lines of ``err`` this process wrote, without those Ray forwards from host actors
    of the session's cluster (``(HostService pid=...) ...``)."""
    return [line for line in err.strip().splitlines() if not re.match(r"\(\S+ pid=\d+", line)]


def test_a_seed_sweep_is_summarised_over_seeds(tiny_sweep):
    runs = pd.read_csv(tiny_sweep / "summary.csv", index_col="run")
    seeds = pd.read_csv(tiny_sweep / "summary_seeds.csv", index_col="algorithm")
    assert sorted(seeds.index) == ["decaf", "dlora"] and (seeds["seeds"] == 2).all()
    for method, rows in runs.groupby("algorithm"):
        acc = rows["mean_node_acc"]
        assert seeds.loc[method, "mean_node_acc_mean"] == pytest.approx(acc.mean())
        assert seeds.loc[method, "mean_node_acc_std"] == pytest.approx(acc.std())


def test_an_interrupted_sweep_resumes_run_by_run(tiny_sweep, tmp_path, pool, capsys):
    """A copy of the finished sweep made to look stopped: one run never started (no folder),
    one killed before its first checkpoint (parts, no checkpoint). Resume (on the session's
    warm hosts) keeps the two finished runs as they are and redoes the others to the same
    metrics."""
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_sweep, sweep, ignore=shutil.ignore_patterns(".lock"))
    shutil.rmtree(sweep / "rep-decaf-2")
    shutil.rmtree(sweep / "rep-dlora-2" / "checkpoints")
    kept = {p: p.stat().st_mtime_ns for p in (sweep / "rep-dlora-1").rglob("*.parquet")}
    capsys.readouterr()
    resume(sweep, pool=pool)
    err = capsys.readouterr().err
    assert err.count("is complete: kept as it is") == 2 and "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in (sweep / "rep-dlora-1").rglob("*.parquet")} == kept
    for name in ("rep-decaf-2", "rep-dlora-2"):
        got = read_metrics(sweep / name / "metrics.parquet")
        want = read_metrics(tiny_sweep / name / "metrics.parquet")
        pd.testing.assert_frame_equal(comparable(got), comparable(want))
    assert len(pd.read_csv(sweep / "summary.csv")) == 4
