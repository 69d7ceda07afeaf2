"""Shared fixtures: one real local Ray cluster and one pool of warm hosts per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from decaf_ray.engine.log import WALL_CLOCK

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    from decaf_ray.engine import cluster

    started = cluster.connect(num_cpus=2)
    yield
    if started:
        cluster.shutdown()


@pytest.fixture(scope="session")
def pool(ray_cluster):
    from decaf_ray.engine.cluster import HostPool

    p = HostPool()
    yield p
    p.clear()


TIMING = set(WALL_CLOCK)  # wall-clock rows: left out when runs are compared


def comparable(frame):
    """The rows two identical runs share value for value: wall-clock metrics and the
    wall_s column aside, in a fixed order."""
    keep = frame[~frame.metric.isin(TIMING)].drop(columns=["wall_s"])
    return keep.sort_values(["round", "metric", "node"]).reset_index(drop=True)


def tiny_config(**overrides):
    """A run that takes seconds: tiny BERT, 4 nodes, short texts, 2 rounds."""
    from decaf_ray.config import apply_override, config_from_dict

    data = {
        "name": "t",
        "seed": 3,
        "topology": {"name": "ring", "n": 4, "mixing": "uniform"},
        "data": {
            "max_samples": 160,
            "eval_samples": 40,
            "max_length": 32,
            "partition": "dirichlet",
            "alpha": 1.0,
        },
        "model": {"name": "tiny-bert", "r": 4, "alpha": 8},
        "train": {"rounds": 2, "local_steps": 2, "batch_size": 8, "lr": 5e-3},
        "eval": {"every": 1},
        "output": {"progress": False},
    }
    for key, value in overrides.items():
        data = apply_override(data, key.split("__"), value)
    return config_from_dict(data)


def net(frame, metric: str):
    """The network-level series of ``metric`` (node == NETWORK), indexed by round."""
    from decaf_ray.engine.log import NETWORK

    return frame[(frame.node == NETWORK) & (frame.metric == metric)].set_index("round").value


def host_of(cfg):
    """One in-process host carrying every node of ``cfg``; returns (host, prepared)."""
    from decaf_ray.node import Host, HostSpec, RunSpec
    from decaf_ray.prepare import prepare

    prep = prepare(cfg)
    host = Host(HostSpec.of(cfg, prep.num_labels))
    host.setup(RunSpec.of(cfg, prep.choices, prep.pad_id), prep.shards, prep.eval_set)
    return host, prep


def assert_batched_equals_sequential(seq_host, bat_host, rounds=(1, 2)) -> None:
    """Two hosts of one config, trained one node after another and in batched passes, give
    the same losses and factors round after round (dropout off)."""
    import numpy as np
    from torch import nn

    for host in (seq_host, bat_host):
        for m in host.model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
    for t in rounds:
        a, b = seq_host.train(t), bat_host.train(t)
        for i in a:
            assert b[i].loss == pytest.approx(a[i].loss, rel=1e-4)
            for key, x in a[i].adapter.B.items():
                np.testing.assert_allclose(b[i].adapter.B[key], x, rtol=1e-4, atol=1e-6)


def run_in_process(cfg, run_dir):
    """Run ``cfg`` on hosts in this process (no Ray); return (executor, metrics frame)."""
    from decaf_ray.engine.executor import Executor
    from decaf_ray.engine.local import start_local_hosts
    from decaf_ray.engine.log import MetricsLog
    from decaf_ray.prepare import prepare

    prep = prepare(cfg)
    sim = Executor(cfg, prep, start_local_hosts(cfg, prep), MetricsLog(run_dir))
    sim.run()
    return sim, sim.log.frame()


@pytest.fixture
def run_local(tmp_path):
    """Run a tiny config in process, without Ray; return its metrics frame."""
    counter = iter(range(1000))

    def _run(**overrides):
        return run_in_process(tiny_config(**overrides), tmp_path / f"local{next(counter)}")[1]

    return _run


@pytest.fixture
def run_tiny(pool, tmp_path):
    """Run a tiny config on the shared pool; return its metrics frame."""
    from decaf_ray.runner import run_one

    counter = iter(range(1000))

    def _run(**overrides):
        cfg = tiny_config(**overrides)
        run_dir = tmp_path / f"run{next(counter)}"
        run_dir.mkdir()
        return run_one(cfg, run_dir, pool)

    return _run


# dlora and decaf, 2 seeds each: the sweep behind the report, seed-summary and sweep-resume tests
SWEEP = """\
name: rep
seed: 1
topology: {name: ring, n: 4, mixing: uniform}
data: {max_samples: 160, eval_samples: 40, max_length: 32, partition: dirichlet, alpha: 1.0}
model: {name: tiny-bert, r: 4, alpha: 8}
train: {rounds: 2, local_steps: 1, batch_size: 8, lr: 5.0e-3}
eval: {every: 1}
output: {progress: false}
sweep:
  algorithm.name: [dlora, decaf]
  seed: [1, 2]
"""


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, pool):
    """The sweep, run as ``decaf-ray run`` runs it (``runner.run``: sweep.yaml, one folder per
    run, summary.csv) on the session's warm hosts, which it leaves warm."""
    from decaf_ray.config import load_config
    from decaf_ray.runner import run

    base = tmp_path_factory.mktemp("report")
    (base / "sweep.yaml").write_text(SWEEP)
    out = base / "sweep"
    run(load_config(base / "sweep.yaml", []), out, pool=pool)
    return out
