"""Network metrics summed on the hosts equal the driver's reference computation over all
adapters (decaf_ray.engine.network), for any split of the nodes into hosts."""

from __future__ import annotations

from functools import reduce
from operator import add

import numpy as np
import pytest

from decaf_ray.algorithms.base import Adapter, pad_rank
from decaf_ray.engine.network import average_drift, consensus_metrics, network_average
from decaf_ray.math.sums import LowRank
from decaf_ray.node.measure import average_adapter, network_metrics, network_sums

SHAPES = {"q": (40, 32), "v": (40, 32), "conv": (24, 36)}  # (d, k) per module: two shape groups


def _adapters(n: int, ranks: list[int], seed: int, spread: float = 1.0) -> list[Adapter]:
    rng = np.random.default_rng(seed)
    base = {m: (rng.normal(size=(d, 8)), rng.normal(size=(8, k))) for m, (d, k) in SHAPES.items()}
    out = []
    for i in range(n):
        r = ranks[i]
        noise = {
            m: (rng.normal(size=(d, r)), rng.normal(size=(r, k))) for m, (d, k) in SHAPES.items()
        }
        out.append(
            Adapter(
                A={m: base[m][1][:r] + spread * noise[m][1] for m in SHAPES},
                B={m: base[m][0][:, :r] + spread * noise[m][0] for m in SHAPES},
                extra={"head": rng.normal(size=(3, 4)).astype(np.float32)},
            )
        )
    return out


def _padded(adapters: list[Adapter], rank: int) -> list[Adapter]:
    return [
        Adapter(
            A={m: pad_rank(a.A[m], "A", rank) for m in a.A},
            B={m: pad_rank(a.B[m], "B", rank) for m in a.B},
            extra=a.extra,
        )
        for a in adapters
    ]


def _on_hosts(after, before, blocks, rank):
    ref = after[0]
    parts = [
        network_sums([after[i] for i in b], ref, rank, [before[i] for i in b] if before else None)
        for b in blocks
    ]
    return reduce(add, parts), ref


@pytest.mark.parametrize(
    "ranks, blocks",
    [
        ([4] * 6, [[0, 1, 2, 3, 4, 5]]),
        ([4] * 6, [[0, 1], [2, 3, 4], [5]]),
        ([2, 4, 4, 8, 2, 8], [[0, 1, 2], [3, 4, 5]]),  # heterogeneous ranks, padded
        ([4] * 9, [[0, 1, 2, 3, 4, 5, 6, 7], [8]]),  # a host's sum wider than the layer: dense
    ],
)
def test_host_sums_equal_the_driver_metrics(ranks, blocks):
    n, rank = len(ranks), max(ranks)
    before = _adapters(n, ranks, seed=1)
    after = _adapters(n, ranks, seed=2, spread=0.3)
    sums, ref = _on_hosts(after, before, blocks, rank)
    got = network_metrics(sums)
    want = {
        **consensus_metrics(_padded(after, rank)),
        **average_drift(_padded(before, rank), _padded(after, rank)),
    }
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-10, abs=1e-12), key

    mean = average_adapter(sums, ref, rank)
    exact = network_average(after)
    for m in SHAPES:
        np.testing.assert_allclose(mean.B[m] @ mean.A[m], exact.B[m] @ exact.A[m], atol=1e-10)
    np.testing.assert_allclose(mean.extra["head"], exact.extra["head"], rtol=1e-6, atol=1e-6)


def test_a_host_sums_its_nodes_in_runs_with_the_same_result(monkeypatch):
    """A host with more nodes than one run of SUM_BYTES holds: the runs' sums add up to the
    sums of all nodes at once (heterogeneous ranks, drift, the dense and factored forms)."""
    from decaf_ray.node import measure

    ranks = [2, 4, 4, 8, 2, 8, 4, 8, 2]
    before, after = _adapters(9, ranks, seed=6), _adapters(9, ranks, seed=7, spread=0.3)
    whole = network_metrics(network_sums(after, after[0], 8, before))
    calls = []
    one_run = measure._sums
    monkeypatch.setattr(measure, "_sums", lambda *a: calls.append(len(a[0])) or one_run(*a))
    per_node = 8 * 8 * sum(d + k for d, k in SHAPES.values())
    monkeypatch.setattr(measure, "SUM_BYTES", 2 * per_node)  # runs of 2 nodes
    in_runs = network_metrics(network_sums(after, after[0], 8, before))
    assert calls == [2, 2, 2, 2, 1]
    for key, value in whole.items():
        assert in_runs[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


def test_a_host_sends_at_most_a_dense_layer_per_sum():
    """Many nodes on one host: the product sum is multiplied out (d x k), not n r wide."""
    after = _adapters(40, [4] * 40, seed=3)
    sums = network_sums(after, after[0], 4)
    for group in sums.groups:
        d, k = SHAPES[group.modules[0]]
        assert group.product.dense is not None and group.product.dense.shape[-2:] == (d, k)
        assert group.product.rank == 0
    few = network_sums(after[:2], after[0], 4)  # 2 nodes: (2 + 1) r (d + k) < d k stays factored
    assert all(g.product.dense is None and g.product.rank == 12 for g in few.groups)


def test_a_host_where_only_some_nodes_moved_measures_the_drift_of_the_rest():
    """One host wide enough for the dense sums, four of its nine nodes unchanged by the
    combine (a churned or isolated node): the drift equals the driver's reference."""
    ranks = [4] * 9
    before = _adapters(9, ranks, seed=8)
    after = before[:4] + _adapters(9, ranks, seed=9, spread=0.3)[4:]
    sums, _ = _on_hosts(after, before, [list(range(9))], 4)
    assert all(g.drift_product.dense is not None for g in sums.groups)  # the dense path
    got, want = network_metrics(sums), average_drift(before, after)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-10, abs=1e-12), key


def test_identical_nodes_measure_exactly_zero():
    one = _adapters(1, [4], seed=4)[0]
    sums = network_sums([one] * 5, one, 4, [one] * 5)
    assert all(v == 0.0 for v in network_metrics(sums).values())


def test_low_rank_sum_multiplies_out_only_when_wider_than_the_layer():
    rng = np.random.default_rng(5)
    B, A = rng.normal(size=(2, 20, 3)), rng.normal(size=(2, 3, 16))
    x = LowRank(None, B, A)
    total = x + x  # R = 6: 6 (20 + 16) < 20 * 16 stays factored
    assert total.dense is None and total.rank == 6
    wide_sum = total + x  # R = 9: 9 * 36 >= 320 is multiplied out
    assert wide_sum.dense is not None and wide_sum.rank == 0
    np.testing.assert_allclose(wide_sum.dense, 3 * B @ A)
    np.testing.assert_allclose(wide_sum.sq_norm(), total.scaled(1.5).sq_norm())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_run_logs_what_the_driver_would_compute_from_all_adapters(tmp_path, mode):
    """End to end, in process: the logged last-round consensus and network-average
    evaluation equal the reference computed from every node's final adapter."""
    from conftest import net, run_in_process, tiny_config

    cfg = tiny_config(algorithm__name="dlora", schedule__mode=mode, train__rounds=2)
    sim, frame = run_in_process(cfg, tmp_path / "run")
    assert len(sim.hosts.blocks) > 1  # the sums of several hosts are added
    states = sim.hosts.fetch(list(sim.final_states().values()))
    for key, value in consensus_metrics(states).items():
        assert net(frame, key).iloc[-1] == pytest.approx(value, rel=1e-9, abs=1e-15), key
    exact = sim.hosts.result(sim.hosts.evaluate_adapter(2, network_average(states)))
    for key, value in exact.nodes[-1].metrics.items():
        assert net(frame, f"eval_{key}").iloc[-1] == pytest.approx(value, rel=1e-5), key
