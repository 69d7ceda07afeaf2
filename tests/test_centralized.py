"""The centralized oracle: one model on the pooled shards of n nodes, n tau steps a round.

It must see exactly the rows the n nodes hold, take as many optimizer steps as they do
together (with their batch size), and log as a one-node run with nothing to agree on."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import host_of, net, run_in_process, tiny_config
from decaf_ray.config import ConfigError, config_from_dict
from decaf_ray.engine.log import NETWORK
from decaf_ray.prepare import prepare

N, TAU = 4, 2  # tiny_config's nodes and local steps


def test_the_one_node_holds_exactly_the_union_of_the_shards():
    spread = prepare(tiny_config(algorithm__name="decaf", eval__on="both"))
    pooled = prepare(tiny_config(algorithm__name="centralized", eval__on="both"))
    assert spread.n == N and pooled.n == 1 and list(pooled.shards) == [0]
    assert len({len(s) for s in spread.shards.values()}) > 1  # a skewed, uneven partition
    for name, rows in pooled.shards[0].arrays().items():
        union = np.concatenate([spread.shards[i].arrays()[name] for i in range(N)])
        np.testing.assert_array_equal(rows, union, err_msg=name)  # same rows, node by node
    for name, rows in pooled.local_evals[0].arrays().items():
        union = np.concatenate([spread.local_evals[i].arrays()[name] for i in range(N)])
        np.testing.assert_array_equal(rows, union, err_msg=name)
    for name, rows in pooled.eval_set.arrays().items():
        np.testing.assert_array_equal(rows, spread.eval_set.arrays()[name])
    np.testing.assert_array_equal(pooled.histogram, spread.histogram.sum(0, keepdims=True))
    np.testing.assert_array_equal(pooled.Pi, [[1.0]])
    assert pooled.spectral_gap == 1.0


def test_it_takes_n_tau_steps_per_round_with_the_same_batch(monkeypatch):
    from decaf_ray.node import RunSpec

    cfg = tiny_config(
        algorithm__name="centralized", train__local_steps=3, train__batched_nodes="off"
    )
    assert cfg.steps_per_round == N * 3 and cfg.train.local_steps == 3  # the config as written
    assert tiny_config(algorithm__name="decaf", train__local_steps=3).steps_per_round == 3
    assert RunSpec.of(cfg).train.local_steps == N * 3
    host, _ = host_of(cfg)
    node = host.nodes[0]
    drawn: list[int] = []
    draw = node.next_batch

    def counted(batch_size: int):
        drawn.append(batch_size)
        return draw(batch_size)

    monkeypatch.setattr(node, "next_batch", counted)
    host.train(1)
    assert drawn == [cfg.train.batch_size] * (N * 3)


def test_a_centralized_run_logs_one_model_with_nothing_to_agree_on(tmp_path):
    cfg = tiny_config(algorithm__name="centralized")
    frame = run_in_process(cfg, tmp_path / "r")[1]
    assert set(frame.node) == {0, NETWORK}
    acc = net(frame, "mean_node_acc")
    assert list(acc.index) == [1, 2] and ((acc >= 0) & (acc <= 1)).all()
    own = frame[(frame.node == 0) & (frame.metric == "eval_acc")].set_index("round").value
    np.testing.assert_allclose(acc, own)  # the mean over one node is that node
    np.testing.assert_allclose(net(frame, "eval_acc"), own)  # and so is the network average
    for metric in ("product_consensus", "factor_consensus_A", "factor_consensus_B"):
        assert (net(frame, metric) == 0.0).all(), metric
    assert (frame[frame.metric == "bytes_sent"].value == 0.0).all()
    # virtual clock: n tau steps of step_s = 1 s each per round, nothing to wait for
    assert net(frame, "virtual_s").to_dict() == {1: N * TAU * 1.0, 2: 2 * N * TAU * 1.0}
    counts = frame[frame.metric.str.startswith("label_count:")]
    assert set(counts.node) == {0}
    assert counts.value.sum() == len(prepare(cfg).shards[0])


def test_a_sweep_prepares_the_oracle_apart_from_the_other_methods():
    from decaf_ray.runner import prepare_all

    names = ["decaf", "centralized", "local"]
    preps = prepare_all([tiny_config(algorithm__name=name) for name in names])
    assert [p.n for p in preps] == [N, 1, N]
    assert preps[0] is preps[2]  # the decentralized methods still share one


def test_options_that_name_nodes_are_refused_for_the_oracle_all_at_once():
    data = {
        "algorithm": {"name": "centralized"},
        "topology": {"name": "file", "path": "g.txt", "n": 0},
        "schedule": {"churn": [[1, 2, 3]], "compute": "lognormal", "graph": "matching"},
    }
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    text = str(err.value)
    assert "schedule.churn needs several nodes; algorithm.name='centralized'" in text
    assert "schedule.graph='matching'" in text
    assert "set topology.n to the file's node count" in text
    assert "compute" not in text  # lognormal draws one speed: fine for one model
    with pytest.raises(ConfigError, match="schedule.compute='factors' gives each node"):
        config_from_dict(
            {
                "algorithm": {"name": "centralized"},
                "topology": {"n": 2},
                "schedule": {"compute": "factors", "factors": [1.0, 2.0]},
            }
        )
    config_from_dict({"algorithm": {"name": "centralized"}, "topology": {"n": 10}})
