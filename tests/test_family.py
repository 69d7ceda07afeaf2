"""The LoRA family around DeCAF: FFA-LoRA, FedSA-LoRA (federated and on the graph),
FlexLoRA, FLoRA and RoLoRA, each by its defining property on the pure maths and end to end
(FLoRA's merged base model: test_flora)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_algorithms import RANK, SHAPES, adapter, product

from conftest import host_of, net, run_in_process, tiny_config
from decaf_ray.algorithms import REGISTRY, Adapter, make_algorithm
from decaf_ray.algorithms.fedsa_lora import DFedSALoRA, FedSALoRA
from decaf_ray.algorithms.ffa_lora import FFALoRA
from decaf_ray.algorithms.flexlora import FlexLoRA
from decaf_ray.algorithms.flora import FLoRA
from decaf_ray.config import SERVER_ALGORITHMS, AlgorithmConfig, ConfigError
from decaf_ray.math import tsvd_dense

FAMILY = ("ffa_lora", "fedsa_lora", "dfedsa_lora", "flexlora", "flora", "rolora", "drolora")


def _round(algo, messages, sizes):
    """A server round: aggregate, then every node combines the server's result."""
    server = algo.aggregate([algo.message(m) for m in messages], sizes)
    return [algo.combine(m, [(1.0, server)])[0] for m in messages]


def test_server_methods_are_the_ones_config_treats_as_such():
    server = {name for name, cls in REGISTRY.items() if cls.uses_server}
    assert server == set(SERVER_ALGORITHMS)
    for name in FAMILY:
        assert make_algorithm(AlgorithmConfig(name=name)).name == name


def test_ffa_lora_keeps_the_shared_A_and_averages_B_exactly():
    rng = np.random.default_rng(1)
    first = adapter(rng)
    nodes = [adapter(rng) for _ in range(3)]
    for a in nodes:  # the shared, frozen A of every node
        a.A.update(first.A)
    sizes = [10, 30, 60]
    algo = FFALoRA()
    assert algo.message(nodes[0]).A == {} and not algo.trains_A
    new = _round(algo, nodes, sizes)
    p = np.array(sizes) / 100
    for m in SHAPES:
        mean_product = sum(pj * product(a, m) for pj, a in zip(p, nodes))
        for a in new:
            assert a.A[m] is first.A[m] or np.array_equal(a.A[m], first.A[m])
            np.testing.assert_allclose(product(a, m), mean_product, atol=1e-5)
    assert algo.server_interference([algo.message(a) for a in nodes], sizes) == 0.0


@pytest.mark.parametrize("cls", [FedSALoRA, DFedSALoRA])
def test_fedsa_lora_shares_A_and_keeps_each_B_private(cls):
    rng = np.random.default_rng(2)
    nodes = [adapter(rng) for _ in range(3)]
    algo = cls()
    msg = algo.message(nodes[0])
    assert msg.B == {} and msg.nbytes == sum(x.nbytes for x in [*nodes[0].A.values()]) + sum(
        x.nbytes for x in nodes[0].extra.values()
    )
    w = [0.2, 0.3, 0.5]
    if algo.uses_server:
        new = _round(algo, nodes, [2, 3, 5])
    else:
        inbox = [(wj, algo.message(a)) for wj, a in zip(w, nodes)]
        new = [algo.combine(a, inbox)[0] for a in nodes]
    for m in SHAPES:
        mean_A = sum(wj * a.A[m].astype(np.float64) for wj, a in zip(w, nodes))
        for old, a in zip(nodes, new):
            np.testing.assert_allclose(a.A[m], mean_A, atol=1e-6)
            assert np.array_equal(a.B[m], old.B[m])  # never sent, never changed
    mean_head = sum(wj * a.extra["head"].astype(np.float64) for wj, a in zip(w, nodes))
    np.testing.assert_allclose(new[0].extra["head"], mean_head, atol=1e-6)


def test_flexlora_clients_get_the_tsvd_of_the_servers_weighted_mean():
    rng = np.random.default_rng(3)
    nodes = [adapter(rng) for _ in range(4)]
    sizes = [5, 10, 20, 15]
    algo = FlexLoRA()
    new = _round(algo, nodes, sizes)
    p = np.array(sizes) / sum(sizes)
    tail = 0.0
    for m in SHAPES:
        mean_product = sum(pj * product(a, m) for pj, a in zip(p, nodes))
        ref = tsvd_dense(mean_product, RANK)
        best = ref.U @ np.diag(ref.S) @ ref.Vh
        tail += np.sqrt(ref.tail_energy)  # each module's truncation error, summed
        for a in new:
            assert a.B[m].shape == nodes[0].B[m].shape
            np.testing.assert_allclose(product(a, m), best, atol=1e-5)
    messages = [algo.message(a) for a in nodes]
    assert algo.server_interference(messages, sizes) == pytest.approx(tail, rel=1e-5)


def test_flora_stacks_to_the_exact_weighted_mean_of_products_at_any_ranks():
    rng = np.random.default_rng(4)
    nodes = [adapter(rng) for _ in range(3)]
    nodes[1] = Adapter(  # rank 2 and rank 4 clients in one round
        A={m: a[:2] for m, a in nodes[1].A.items()},
        B={m: b[:, :2] for m, b in nodes[1].B.items()},
        extra=nodes[1].extra,
    )
    sizes = [10, 30, 60]
    algo = FLoRA()
    server = algo.aggregate([algo.message(a) for a in nodes], sizes)
    p = np.array(sizes) / 100
    for m, (d, k) in SHAPES.items():
        assert server.B[m].shape == (d, 2 * RANK + 2) and server.A[m].shape == (2 * RANK + 2, k)
        mean_product = sum(pj * product(a, m) for pj, a in zip(p, nodes))
        np.testing.assert_allclose(product(server, m), mean_product, rtol=1e-6, atol=1e-6)
    mean_head = sum(pj * a.extra["head"].astype(np.float64) for pj, a in zip(p, nodes))
    np.testing.assert_allclose(server.extra["head"], mean_head, rtol=1e-6)
    assert algo.server_interference(nodes, sizes) == 0.0
    new, _ = algo.combine(nodes[1], [(1.0, server)])  # the update goes to the base: B = 0
    assert all(not b.any() and b.shape == nodes[1].B[m].shape for m, b in new.B.items())
    assert new.extra["head"] is server.extra["head"]


@pytest.mark.parametrize("name", FAMILY)
def test_each_method_runs_end_to_end_with_its_property(tmp_path, name):
    cfg = tiny_config(algorithm__name=name, train__rounds=2)
    sim, frame = run_in_process(cfg, tmp_path)
    states = sim.final_states()
    final = sim.hosts.fetch([states[i] for i in sorted(states)])
    modules = final[0].modules
    assert set(frame.metric) >= {"train_loss", "eval_acc", "mean_node_acc", "bytes_sent"}
    assert net(frame, "mean_node_acc").index.max() == 2
    sent = frame[frame.metric == "bytes_sent"]
    a_bytes = sum(x.nbytes for x in final[0].A.values())
    b_bytes = sum(x.nbytes for x in final[0].B.values())
    head = sum(x.nbytes for x in final[0].extra.values())
    if name == "ffa_lora":  # A never trains: every node's A is the shared initial one
        assert (sent.value == b_bytes + head).all()
        initial = host_of(cfg)[0].adapter(0)
        for a in final:
            for m in modules:
                assert np.array_equal(a.A[m], initial.A[m])
    if name in ("fedsa_lora", "dfedsa_lora"):  # A (and the head) travel, B stays private
        assert (sent.value > 0).all() and (sent.value % (a_bytes + head) == 0).all()
        assert any(not np.array_equal(final[0].B[m], final[1].B[m]) for m in modules)
    if name == "fedsa_lora":
        for a in final:
            for m in modules:
                np.testing.assert_allclose(a.A[m], final[0].A[m], atol=1e-7)
    if name == "flexlora":  # one server product for every node
        for a in final:
            for m in modules:
                np.testing.assert_allclose(a.B[m] @ a.A[m], final[0].B[m] @ final[0].A[m])
        assert (net(frame, "interference") >= 0).all()
        assert (sent.value == a_bytes + b_bytes + head).all()
    if name == "flora":  # exact aggregation; the update is in the bases, every adapter fresh
        assert (net(frame, "interference") == 0).all()
        assert (sent.value == a_bytes + b_bytes + head).all()
        assert (net(frame, "product_consensus") == 0).all()
        assert all(not a.B[m].any() for a in final for m in modules)
        assert {s.host.merged.round_idx for s in sim.hosts.services} == {2}


@pytest.mark.parametrize("name", ["ffa_lora", "flexlora", "fedsa_lora", "flora"])
def test_server_methods_refuse_asynchrony_and_churn(name):
    with pytest.raises(ConfigError) as err:
        tiny_config(algorithm__name=name, schedule__mode="async", schedule__churn=[[0, 1, 2]])
    assert f"not {name}" in str(err.value) and f"{name}'s server has no churn" in str(err.value)


def test_frozen_A_methods_need_a_shared_start():
    with pytest.raises(ConfigError, match="set model.same_init=true"):
        tiny_config(algorithm__name="ffa_lora", model__same_init=False)


def test_the_family_runs_on_ray(run_tiny, run_local):
    for name in FAMILY:
        frame = run_tiny(algorithm__name=name, train__rounds=2)
        assert net(frame, "mean_node_acc").index.max() == 2, name
    # decaf, mixed ranks: in process, as hosts of another model config would replace the warm pool
    frame = run_local(model__ranks=[2, 4, 2, 4], train__rounds=2)
    assert np.isfinite(net(frame, "product_consensus")).all()


def test_rolora_alternates_factors_and_aggregates_exactly():
    from decaf_ray.algorithms.rolora import RoLoRA

    rng = np.random.default_rng(4)
    shared = adapter(rng)
    nodes = [adapter(rng) for _ in range(3)]
    for a in nodes:  # round 2 trains A; B is the same everywhere (the last broadcast)
        a.B.update(shared.B)
    algo, sizes = RoLoRA(), [1, 1, 2]
    assert algo.trained_factors(1) == ("B",) and algo.trained_factors(2) == ("A",)
    messages = [algo.message_in_round(a, 2) for a in nodes]
    assert all(m.B == {} and m.A for m in messages)
    server = algo.aggregate(messages, sizes)
    new = [algo.combine(a, [(1.0, server)])[0] for a in nodes]
    p = np.array(sizes) / 4
    for m in SHAPES:
        exact = sum(pj * product(a, m) for pj, a in zip(p, nodes))
        for a in new:
            np.testing.assert_allclose(product(a, m), exact, atol=1e-5)  # no interference


@pytest.mark.parametrize(
    "name, mix", [("rolora", "trained"), ("drolora", "trained"), ("drolora", "both")]
)
def test_rolora_end_to_end_trains_and_sends_one_factor_a_round(tmp_path, name, mix):
    cfg = tiny_config(algorithm__name=name, algorithm__rolora_mix=mix, train__rounds=3)
    sim, frame = run_in_process(cfg, tmp_path)
    states = sim.final_states()
    final = sim.hosts.fetch([states[i] for i in sorted(states)])
    a_bytes = sum(x.nbytes for x in final[0].A.values())
    b_bytes = sum(x.nbytes for x in final[0].B.values())
    head = sum(x.nbytes for x in final[0].extra.values())
    sent = frame[frame.metric == "bytes_sent"].groupby("round").value.max()
    scale = 1 if name == "rolora" else 2  # a ring node sends to each of its 2 neighbours
    one = [b_bytes + head, a_bytes + head, b_bytes + head]  # rounds 1-3: B, A, B
    full = [a_bytes + b_bytes + head] * 3
    assert sent.tolist() == [scale * x for x in (full if mix == "both" else one)]
    # the clock's link delays price what travels: rounds 1 and 2 of the cycle, per node
    assert sim.message_bytes == [full[:2] if mix == "both" else one[:2]] * len(final)
    if name == "drolora":
        assert (net(frame, "product_consensus") > 0).all()
    if name == "rolora":  # one server broadcast of the trained factor: every node agrees
        assert (net(frame, "product_consensus") < 1e-10).all()
        assert (net(frame, "interference") == 0).all()


def test_decaf_takes_each_nodes_own_rank_from_a_mix_of_ranks():
    """Heterogeneous ranks, on the maths: messages of ranks 2, 4 and 8 mixed; a node of rank
    r_i gets TSVD_{r_i} of the mixed product, and the truncations of the nodes are nested
    (on a complete graph every node mixes the same product)."""
    from decaf_ray.algorithms import Adapter
    from decaf_ray.algorithms.decaf import DeCAF

    rng = np.random.default_rng(5)

    def of_rank(r: int) -> Adapter:
        return Adapter(
            A={m: rng.standard_normal((r, k)).astype(np.float32) for m, (d, k) in SHAPES.items()},
            B={m: rng.standard_normal((d, r)).astype(np.float32) for m, (d, k) in SHAPES.items()},
            extra={"head": rng.standard_normal((3, 5)).astype(np.float32)},
        )

    nodes = [of_rank(r) for r in (2, 4, 8)]
    inbox = [(1 / 3, a) for a in nodes]
    for m in SHAPES:
        mixed = sum(w * product(a, m) for w, a in inbox)
        U, S, Vh = np.linalg.svd(mixed)
        for own in nodes:
            r = min(own.A[m].shape[0], *mixed.shape)  # "out" is 7 x 9: rank 8 is all of it
            new = DeCAF().combine(own, inbox)[0]
            assert new.A[m].shape == own.A[m].shape and new.B[m].shape == own.B[m].shape
            best = (U[:, :r] * S[:r]) @ Vh[:r]
            np.testing.assert_allclose(product(new, m), best, atol=1e-4)


@pytest.mark.parametrize("name", ["decaf", "dlora", "fedavg", "flexlora"])
def test_heterogeneous_ranks_run_end_to_end(tmp_path, name):
    """Nodes of ranks 2 and 4 (model.r = 4): each keeps its rank, sends bytes in proportion,
    and every metric is defined; rank is logged per node at round 0."""
    ranks = [2, 4, 2, 4]
    topology = "complete" if name == "decaf" else "ring"
    cfg = tiny_config(algorithm__name=name, model__ranks=ranks, topology__name=topology)
    sim, frame = run_in_process(cfg, tmp_path)
    logged = frame[(frame.metric == "rank") & (frame["round"] == 0)].set_index("node").value
    assert logged.tolist() == ranks
    states = sim.final_states()
    final = sim.hosts.fetch([states[i] for i in sorted(states)])
    for a, r in zip(final, ranks):
        assert all(x.shape[0] == r for x in a.A.values())
        assert all(x.shape[1] == r for x in a.B.values())
    sent = frame[(frame.metric == "bytes_sent") & (frame["round"] == 1)].set_index("node").value
    head = sum(x.nbytes for x in final[0].extra.values())
    factor = {
        r: sum(x.nbytes for x in a.A.values()) + sum(x.nbytes for x in a.B.values())
        for a, r in zip(final, ranks)
    }
    per = 1 if name in ("fedavg", "flexlora") else (3 if topology == "complete" else 2)
    assert sent.tolist() == [per * (factor[r] + head) for r in ranks]
    assert sim.message_bytes == [[factor[r] + head] for r in ranks]  # the clock's link delays
    for metric in ("product_consensus", "factor_consensus_A", "mean_node_acc"):
        assert np.isfinite(net(frame, metric)).all()
    if name == "decaf":  # one mixed product everywhere: rank-2 nodes hold its TSVD_2
        for m in final[0].modules:
            P4 = final[1].B[m].astype(np.float64) @ final[1].A[m]
            U, S, Vh = np.linalg.svd(P4)
            best2 = (U[:, :2] * S[:2]) @ Vh[:2]
            np.testing.assert_allclose(final[0].B[m] @ final[0].A[m], best2, atol=1e-5)


def test_rank_tiers_are_drawn_per_node_from_the_seed():
    from decaf_ray.config import ModelConfig
    from decaf_ray.node.state import node_rank

    model = ModelConfig(r=16, rank_tiers={4: 0.5, 8: 0.3, 16: 0.2})
    draws = [node_rank(model, 7, i) for i in range(400)]
    assert draws == [node_rank(model, 7, i) for i in range(400)]  # repeatable
    assert draws != [node_rank(model, 8, i) for i in range(400)]  # the seed decides
    share = {r: draws.count(r) / 400 for r in (4, 8, 16)}
    assert abs(share[4] - 0.5) < 0.08 and abs(share[16] - 0.2) < 0.08


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"model__ranks": [2, 8, 2, 2]}, "must lie in 1..model.r=4"),
        ({"model__ranks": [2, 4]}, "model.ranks has 2 entries; give one per node (4)"),
        (
            {"model__ranks": [2, 4, 2, 4], "algorithm__name": "dlora_fa"},
            "heterogeneous ranks (model.ranks / rank_tiers) work with",
        ),
    ],
)
def test_bad_heterogeneous_ranks_are_refused(overrides, needle):
    with pytest.raises(ConfigError) as err:
        tiny_config(**overrides)
    assert needle in str(err.value)


def test_the_family_table_counts_every_byte_sent():
    from decaf_ray.runner import summarise

    rows = [(t, i, "bytes_sent", 2.0**19 * (i + 1)) for t in (1, 2) for i in range(3)]
    rows += [(2, -1, "mean_node_acc", 0.5), (2, -1, "product_consensus", 0.25)]
    frame = pd.DataFrame(rows, columns=["round", "node", "metric", "value"])
    s = summarise(frame)
    assert s["sent_mb"] == 6.0 and s["mean_node_acc"] == 0.5 and s["product_consensus"] == 0.25
