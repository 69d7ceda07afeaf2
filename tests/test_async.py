"""Asynchrony on a real local Ray cluster: modes, faults and a genuinely slow host."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import TIMING, tiny_config
from decaf_ray.config import ConfigError
from decaf_ray.engine.log import NETWORK

SLOW = {"schedule__straggler_fraction": 0.25, "schedule__straggler_factor": 5.0}


def values(frame: pd.DataFrame, drop: set[str] = frozenset()) -> pd.Series:
    keep = frame[~frame.metric.isin(TIMING | set(drop))]
    return keep.set_index(["round", "node", "metric"])["value"].sort_index()


def rows(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    return frame[(frame.metric == metric) & (frame.node >= 0)]


def test_equal_speeds_async_and_bounded_equal_sync(run_tiny):
    sync = run_tiny(algorithm__name="decaf")
    assert "virtual_s" in sync.columns and (sync[sync["round"] > 0].virtual_s > 0).all()
    for mode in ("async", "bounded"):
        other = run_tiny(algorithm__name="decaf", schedule__mode=mode, schedule__staleness=0)
        pd.testing.assert_series_equal(values(sync), values(other), check_exact=True)
        assert np.array_equal(
            sync.groupby("round").virtual_s.max(), other.groupby("round").virtual_s.max()
        )


def test_same_seed_same_async_metrics(run_tiny):
    kw = dict(algorithm__name="dlora", schedule__mode="async", schedule__loss_p=0.3, **SLOW)
    a, b = run_tiny(**kw), run_tiny(**kw)
    pd.testing.assert_series_equal(values(a), values(b), check_exact=True)
    pd.testing.assert_series_equal(
        a.set_index(["round", "node", "metric"]).virtual_s.sort_index(),
        b.set_index(["round", "node", "metric"]).virtual_s.sort_index(),
    )
    assert rows(a, "dropped").value.sum() > 0
    assert (rows(a, "staleness_rounds").value != 0).any()  # stragglers make stale inboxes


def test_lost_link_equals_graph_without_that_edge(run_tiny, tmp_path):
    ring = tmp_path / "ring.txt"
    ring.write_text("".join(f"{i} {(i + 1) % 4} {1 / 3}\n" for i in range(4)))
    cut = tmp_path / "cut.txt"
    cut.write_text("".join(f"{i} {(i + 1) % 4} {1 / 3}\n" for i in range(1, 4)))
    common = dict(topology__name="file", topology__mixing="edge_weights", algorithm__name="dlora")
    lossy = run_tiny(
        topology__path=str(ring),
        schedule__link_loss={"0-1": 1.0},
        schedule__missing="to_self",
        **common,
    )
    absent = run_tiny(topology__path=str(cut), **common)
    per_link = {"bytes_sent", "dropped", "spectral_gap"}  # lost messages were still sent
    pd.testing.assert_series_equal(
        values(lossy, per_link), values(absent, per_link), check_exact=True
    )
    assert rows(lossy, "dropped").groupby("node").value.sum().tolist() == [2.0, 2.0, 0.0, 0.0]


def test_bounded_never_runs_more_than_s_rounds_ahead(run_tiny):
    s = 1
    frame = run_tiny(
        algorithm__name="dlora",
        train__rounds=4,
        schedule__mode="bounded",
        schedule__staleness=s,
        schedule__compute="factors",
        schedule__factors=[4.0, 1.0, 1.0, 1.0],
    )
    published = rows(frame, "train_loss")[["node", "round", "virtual_s"]]
    combined = rows(frame, "idle_s")[["node", "round", "virtual_s"]]
    for _, c in combined.iterrows():
        i, t, when = int(c.node), int(c["round"]), c.virtual_s
        for j in ((i - 1) % 4, (i + 1) % 4):
            done = published[(published.node == j) & (published.virtual_s <= when)]
            heard = int(done["round"].max()) if len(done) else 0
            assert heard >= t - s, (i, t, j)
    assert rows(frame, "max_lag_rounds").value.max() <= s
    assert rows(frame, "idle_s").value.max() > 0  # fast nodes did wait for node 0


def test_slow_host_does_not_stop_other_hosts(run_tiny):
    frame = run_tiny(
        algorithm__name="dlora",
        train__rounds=3,
        cluster__nodes_per_actor=2,  # host 0: nodes 0, 1; host 1: nodes 2, 3
        schedule__mode="async",
        schedule__compute="factors",
        schedule__factors=[5.0, 5.0, 1.0, 1.0],
        schedule__debug_sleep_s={0: 2.0},
    )
    done = rows(frame, "train_loss").groupby("node").wall_s
    assert done.max()[[2, 3]].max() < done.min()[[0, 1]].min()
    assert len(rows(frame, "train_loss")) == 12


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_churned_nodes_rejoin_and_isolated_nodes_train_alone(run_tiny, mode):
    frame = run_tiny(
        algorithm__name="decaf",
        train__rounds=4,
        schedule__mode=mode,
        schedule__churn=[[1, 2, 4], [3, 2, 4]],
        schedule__rejoin="neighbours",
    )
    trained = rows(frame, "train_loss").pivot(index="round", columns="node", values="value")
    assert trained[1].isna().tolist() == [False, True, True, False]
    assert trained[0].notna().all()
    received = rows(frame, "received").pivot(index="round", columns="node", values="value")
    assert received.loc[2, 0] == 0 and received.loc[2, 2] == 0  # both neighbours away
    assert np.isfinite(frame[frame.node == NETWORK].value).all()


def test_deadline_mode_drops_the_straggler(run_tiny):
    frame = run_tiny(
        algorithm__name="dlora",
        schedule__mode="deadline",
        schedule__deadline_s=3.0,
        schedule__compute="factors",
        schedule__factors=[5.0, 1.0, 1.0, 1.0],
    )
    assert frame[frame.metric == "virtual_s"].value.tolist() == [3.0, 6.0]
    assert rows(frame, "dropped").groupby("node").value.sum().tolist() == [0.0, 2.0, 0.0, 2.0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"schedule__loss_p": -0.1}, r"schedule.loss_p=-0.1 is a probability"),
        (
            {"schedule__mode": "deadline", "schedule__deadline_s": 0},
            r"deadline_s=0.0 must be positive",
        ),
        ({"schedule__mode": "eventual"}, r"schedule.mode='eventual' is unknown"),
        ({"schedule__link_loss": {"0-1": 2}}, r"link_loss\['0-1'\]=2 is a probability"),
        (
            {"schedule__compute": "trace", "schedule__trace_path": "TRACE"},
            r"trace.txt.*2 rows.*4 nodes",
        ),
    ],
)
def test_bad_schedule_gets_one_clear_error(tmp_path, overrides, message):
    trace = tmp_path / "trace.txt"
    trace.write_text("1.0\n2.0\n")
    overrides = {k: (str(trace) if v == "TRACE" else v) for k, v in overrides.items()}
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


@pytest.mark.parametrize("graph", ["one_peer_exponential", "matching"])
def test_time_varying_graph_runs_asynchronously(run_tiny, graph):
    frame = run_tiny(
        algorithm__name="decaf",
        train__rounds=3,
        schedule__mode="async",
        schedule__graph=graph,
        schedule__straggler_fraction=0.25,
    )
    assert rows(frame, "received").value.max() <= 2
    assert np.isfinite(frame[frame.metric == "product_consensus"].value).all()


def test_async_run_keeps_one_state_ref_per_node(pool, tmp_path):
    """Refs of old rounds are dropped as the run goes: the object store holds O(n) states."""
    from decaf_ray.engine.cluster import start_hosts
    from decaf_ray.engine.executor import Executor
    from decaf_ray.engine.log import MetricsLog
    from decaf_ray.prepare import prepare

    cfg = tiny_config(
        algorithm__name="decaf", schedule__mode="async", train__rounds=4, eval__every=4, **SLOW
    )
    prep = prepare(cfg)
    sim = Executor(cfg, prep, start_hosts(cfg, prep, pool), MetricsLog(tmp_path / "run"))
    sim.run()
    held = sim.held()
    assert held["messages"] == [] and held["trained"] == []
    assert held["states"] == [(i, 4) for i in range(prep.n)]
    frame = sim.log.frame()
    assert sorted(frame[frame.metric == "product_consensus"]["round"]) == [1, 2, 3, 4]


def test_round_wall_times_logged_in_every_mode(run_tiny):
    """Each round's wall seconds (async: between completions) feed summary's sec_per_round."""
    from decaf_ray.runner import summarise

    for mode in ("sync", "async"):
        frame = run_tiny(algorithm__name="dlora", schedule__mode=mode, train__rounds=3)
        walls = frame[(frame.metric == "round_wall_s") & (frame.node == NETWORK)]
        assert sorted(walls["round"]) == [1, 2, 3]
        assert (walls.value > 0).all()
        assert summarise(frame)["sec_per_round"] == pytest.approx(walls.value.mean())
