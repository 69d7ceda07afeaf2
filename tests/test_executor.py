"""The one executor: every mode through the same code, in process (no Ray) and on Ray."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from conftest import TIMING, net, run_in_process, tiny_config
from decaf_ray.engine.hosts import HostError

PHASES = ("train_s", "exchange_s", "combine_s", "metrics_s", "eval_s", "round_wall_s")
CHURN = dict(
    schedule__churn=[[1, 2, 4], [2, 3, 4]],
    schedule__rejoin="neighbours",
    schedule__loss_p=0.3,
    train__rounds=4,
)


def values(frame: pd.DataFrame) -> pd.Series:
    keep = frame[~frame.metric.isin(TIMING)]
    return keep.set_index(["round", "node", "metric"])["value"].sort_index()


@pytest.mark.parametrize("mode", ["sync", "deadline", "async", "bounded"])
def test_every_mode_logs_phase_times_for_every_round(run_local, mode):
    frame = run_local(
        algorithm__name="decaf", schedule__mode=mode, schedule__deadline_s=100.0, train__rounds=3
    )
    for phase in PHASES:
        rows = net(frame, phase)
        assert list(rows.index) == [1, 2, 3], phase
        assert (rows >= 0).all() and np.isfinite(rows).all(), phase
    assert (net(frame, "train_s") > 0).all() and (net(frame, "eval_s") > 0).all()


@pytest.mark.parametrize("algorithm", ["dlora", "decaf", "dlora_fa"])
def test_churn_rejoin_and_loss_give_the_same_run_in_sync_and_bounded_zero(run_local, algorithm):
    """Same plan, same executor: sync and bounded with s = 0 agree bit for bit, counts of
    sent bytes and drops included, under churn, rejoins from neighbours and losses."""
    sync = run_local(algorithm__name=algorithm, **CHURN)
    bounded = run_local(
        algorithm__name=algorithm, schedule__mode="bounded", schedule__staleness=0, **CHURN
    )
    pd.testing.assert_series_equal(values(sync), values(bounded), check_exact=True)
    dropped = sync[(sync.metric == "dropped") & (sync.node >= 0)].value
    assert dropped.sum() > 0


def test_rejoin_reads_neighbour_states_as_their_messages(run_local):
    """dLoRA-FA's A is shared and frozen: a node rejoining from its neighbours' states takes
    their B and head (what they would send), never a re-mixed A."""
    frame = run_local(
        algorithm__name="dlora_fa",
        topology__name="complete",
        **CHURN,
    )
    assert (net(frame, "factor_consensus_A") == 0).all()
    assert (net(frame, "factor_consensus_B") > 0).all()


def test_local_algorithm_ignores_rejoin_and_sends_nothing(run_local):
    frame = run_local(algorithm__name="local", **CHURN)
    sent = frame[(frame.metric == "bytes_sent") & (frame.node >= 0)].value
    assert (sent == 0).all() and len(sent) == 4 * 4 - 3  # nodes away in 3 node-rounds


def test_debug_sleep_is_honoured_in_sync(run_local):
    t0 = time.perf_counter()
    frame = run_local(algorithm__name="dlora", schedule__debug_sleep_s={0: 0.5}, eval__every=5)
    assert time.perf_counter() - t0 > 1.0  # two rounds, each waits for node 0's host
    assert (net(frame, "train_s") >= 0.5).all()


def test_run_until_a_round_then_on_equals_one_run(tmp_path):
    from decaf_ray.engine.executor import Executor
    from decaf_ray.engine.local import start_local_hosts
    from decaf_ray.engine.log import MetricsLog
    from decaf_ray.prepare import prepare

    cfg = tiny_config(algorithm__name="decaf", train__rounds=3, schedule__mode="async")
    _, whole = run_in_process(cfg, tmp_path / "whole")
    prep = prepare(cfg)
    sim = Executor(cfg, prep, start_local_hosts(cfg, prep), MetricsLog(tmp_path / "steps"))
    for t in (1, 2, 3):
        sim.run(until_round=t)
        assert sorted(net(sim.log.frame(), "virtual_s").index) == list(range(1, t + 1))
    pd.testing.assert_series_equal(values(whole), values(sim.log.frame()), check_exact=True)


def test_a_failing_host_is_named_with_its_nodes_and_round(tmp_path, monkeypatch):
    from decaf_ray.node.service import HostService

    real = HostService.train

    def flaky(self, round_idx, node_ids, sleep_s=0.0):
        if round_idx == 2 and 0 in node_ids:
            raise RuntimeError("out of memory")
        return real(self, round_idx, node_ids, sleep_s)

    monkeypatch.setattr(HostService, "train", flaky)
    with pytest.raises(HostError, match=r"local training failed in round 2 on the host of nodes "):
        run_in_process(tiny_config(algorithm__name="dlora"), tmp_path / "run")


def test_in_process_hosts_give_what_ray_hosts_give(run_tiny, run_local):
    kw = dict(algorithm__name="decaf", schedule__mode="async", **CHURN)
    pd.testing.assert_series_equal(
        values(run_tiny(**kw)), values(run_local(**kw)), rtol=1e-6, atol=1e-9
    )


def test_local_test_sets_score_each_node_on_its_own_data(run_local):
    """eval.on=both: every node is scored on the shared set and on its own test split, carved
    from its (non-IID) partition, so local accuracies differ from shared ones."""
    from decaf_ray.prepare import prepare

    prep = prepare(tiny_config(eval__on="both", data__alpha=0.1))
    assert sorted(prep.local_evals) == [0, 1, 2, 3]
    for i, shard in prep.local_evals.items():
        total = len(shard) + len(prep.shards[i])
        assert len(shard) == min(max(1, round(total * 0.2)), total - 1)  # test_fraction 0.2
    histograms = [np.bincount(s.labels, minlength=5) for s in prep.local_evals.values()]
    assert len({tuple(h.argsort()[-1:]) for h in histograms}) > 1  # non-IID: own mixtures
    frame = run_local(algorithm__name="dlora", eval__on="both", data__alpha=0.1)
    for metric in ("eval_acc", "eval_local_acc", "eval_local_f1", "eval_local_loss"):
        rows = frame[(frame.metric == metric) & (frame.node >= 0)]
        assert len(rows) == 8, metric
    assert len(net(frame, "mean_node_local_acc")) == 2
    local = frame[frame.metric == "eval_local_acc"].value.to_numpy()
    shared = frame[(frame.metric == "eval_acc") & (frame.node >= 0)].value.to_numpy()
    assert not np.allclose(local, shared)
    only = run_local(algorithm__name="dlora", eval__on="local")
    assert "eval_acc" not in set(only.metric) and "eval_local_acc" in set(only.metric)


def test_progress_off_a_terminal_is_one_line_every_few_rounds(tmp_path, capsys):
    from decaf_ray.engine.progress import Progress

    progress = Progress("p", 100, 0, enabled=True)  # pytest's stderr is not a terminal
    for _ in range(100):
        progress.update({"loss": "1.0"})
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 20 and lines[-1].startswith("p: round 100/100 (")
    assert "\r" not in "".join(lines) and lines[0].endswith("loss=1.0")
    run_in_process(tiny_config(output__progress=True), tmp_path / "r")
    err = capsys.readouterr().err
    assert "t: round 1/2" in err and "t: round 2/2" in err and "acc=" in err


def test_a_sync_round_trains_behind_the_last_rounds_metrics_on_ray(run_tiny, monkeypatch, tmp_path):
    """On Ray hosts a sync round's local steps are submitted as soon as the previous round's
    combines are back, before its metric sums and evaluations are (they queue ahead of them
    on each host); the metrics equal an in-process run's, which keeps the rounds apart, and
    the phases still add up to each round."""
    from decaf_ray.engine.executor import Executor

    submitted = []  # (round trained, last round closed then)
    launch = Executor._launch

    def spy(self, ticket, kind, t):
        if kind == "train":
            submitted.append((t, self._closed))
        launch(self, ticket, kind, t)

    monkeypatch.setattr(Executor, "_launch", spy)
    frame = run_tiny(algorithm__name="decaf", train__rounds=3)
    assert sorted(set(submitted)) == [(1, 0), (2, 0), (3, 1)]
    monkeypatch.setattr(Executor, "_launch", launch)
    want = run_in_process(tiny_config(algorithm__name="decaf", train__rounds=3), tmp_path / "l")[1]
    assert values(frame).equals(values(want))
    phases = frame[frame.metric.isin(PHASES[:-1]) & (frame.node == -1)]
    total = phases.groupby("round").value.sum()
    wall = net(frame, "round_wall_s")
    assert (total <= wall + 1e-6).all() and (net(frame, "train_s") > 0).all()


@pytest.mark.parametrize("name, received", [("local", 0), ("fedavg", 1), ("dlora", 2)])
def test_received_counts_what_the_method_delivers_not_the_graph(run_local, name, received):
    """On a ring with message loss, a node's inbox in the plan holds its two neighbours; local
    training receives nothing, fedavg one message (the server's average of every message, so
    none is dropped for it), and dlora its neighbours' messages less the lost ones."""
    frame = run_local(algorithm__name=name, schedule__loss_p=0.5)
    got = frame[(frame.metric == "received") & (frame.node >= 0)].value
    dropped = frame[(frame.metric == "dropped") & (frame.node >= 0)].value
    staleness = frame[frame.metric == "staleness_rounds"]
    if name == "dlora":
        assert got.max() <= received and dropped.sum() > 0 and len(staleness)
    else:
        assert (got == received).all() and (dropped == 0).all() and staleness.empty
