"""The combine rules and network metrics on whole adapters (many modules, batched by shape),
checked module by module against dense references. Pure numpy/torch: no Ray, no model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decaf_ray.algorithms import Adapter
from decaf_ray.algorithms.base import mix_adapters
from decaf_ray.algorithms.decaf import DeCAF
from decaf_ray.algorithms.dlora import DLoRA
from decaf_ray.algorithms.dlora_fa import DLoRAFA
from decaf_ray.algorithms.rolora import DRoLoRA
from decaf_ray.engine.network import average_drift, consensus_metrics
from decaf_ray.math import tsvd_dense
from decaf_ray.math.stacked import tsvd_stacked

# two shape groups: three (12 x 4)(4 x 10) modules and one (7 x 4)(4 x 9)
SHAPES = {"q0": (12, 10), "v0": (12, 10), "q1": (12, 10), "out": (7, 9)}
RANK = 4


def adapter(rng: np.random.Generator, zero_B: bool = False) -> Adapter:
    return Adapter(
        A={m: rng.standard_normal((RANK, k)).astype(np.float32) for m, (d, k) in SHAPES.items()},
        B={
            m: (0 if zero_B else 1) * rng.standard_normal((d, RANK)).astype(np.float32)
            for m, (d, k) in SHAPES.items()
        },
        extra={"head": rng.standard_normal((3, 5)).astype(np.float32)},
    )


def product(a: Adapter, m: str) -> np.ndarray:
    return a.B[m].astype(np.float64) @ a.A[m].astype(np.float64)


def inbox_of(rng: np.random.Generator, m: int = 3) -> list[tuple[float, Adapter]]:
    w = rng.dirichlet(np.ones(m))
    return [(float(wj), adapter(rng)) for wj in w]


@pytest.mark.parametrize("split", ["balanced", "all_in_B"])
def test_decaf_combine_is_the_dense_tsvd_of_each_module(split):
    rng = np.random.default_rng(0)
    inbox = inbox_of(rng)
    own = inbox[0][1]
    new, stats = DeCAF(sv_split=split).combine(own, inbox)
    tail, top = 0.0, 0.0
    for m in SHAPES:
        P = sum(w * product(msg, m) for w, msg in inbox)
        ref = tsvd_dense(P, RANK)
        best = ref.U @ np.diag(ref.S) @ ref.Vh
        np.testing.assert_allclose(product(new, m), best, atol=1e-5)
        assert new.B[m].dtype == np.float32 and new.B[m].shape == own.B[m].shape
        tail += ref.tail_energy
        top = max(top, float(ref.S[0]))
    assert stats["tsvd_tail"] == pytest.approx(tail, rel=1e-6)
    assert stats["top_singular_value"] == pytest.approx(top, rel=1e-6)
    expected_head = sum(w * msg.extra["head"].astype(np.float64) for w, msg in inbox)
    np.testing.assert_allclose(new.extra["head"], expected_head, rtol=1e-6)


@pytest.mark.parametrize("align", [False, True])
def test_decaf_combines_a_host_of_nodes_in_batches_as_one_at_a_time(align, monkeypatch):
    # nodes with 3 or 2 messages, one with an all-zero product, one with an empty inbox, and
    # a batch limit that splits the 3-message nodes in two calls: each equals its own combine
    from decaf_ray.algorithms import stacking

    rng = np.random.default_rng(7)
    inboxes = [inbox_of(rng) for _ in range(5)] + [inbox_of(rng, m=2) for _ in range(2)]
    zero = [(0.5, adapter(rng, zero_B=True)), (0.5, adapter(rng, zero_B=True))]
    headless = [(0.5, adapter(rng)), (0.5, adapter(rng))]
    headless[1][1].extra.clear()  # a message without the head: the head is mixed per node
    inboxes += [zero, [(0.0, adapter(rng))]]
    owns = [adapter(rng) for _ in inboxes]
    owns.insert(5, adapter(rng))
    inboxes.insert(5, headless)
    algo = DeCAF(align=align)
    one_node = stacking.stack_bytes(owns[0], 3)
    monkeypatch.setattr(stacking, "STACK_BYTES", 3 * one_node)  # 5 nodes: calls of 3, 2
    calls = []
    batch = algo._combine_batch
    monkeypatch.setattr(
        algo, "_combine_batch", lambda nodes: calls.append(len(nodes)) or batch(nodes)
    )
    together = algo.combine_all(owns, inboxes)
    assert sorted(calls) == [1, 2, 3, 4]  # 3-message nodes: 3 + 2; 2 messages: 4; empty: 1
    for own, inbox, (new, stats) in zip(owns, inboxes, together):
        alone, alone_stats = DeCAF(align=align).combine(own, inbox)
        for part in ("A", "B", "extra"):
            for key, value in getattr(alone, part).items():
                np.testing.assert_allclose(getattr(new, part)[key], value, rtol=1e-5, atol=1e-6)
        assert stats == pytest.approx(alone_stats, rel=1e-9, abs=1e-12)
    np.testing.assert_array_equal(together[-1][0].B["q0"], owns[-1].B["q0"])  # no weight: own
    np.testing.assert_array_equal(together[-1][0].extra["head"], owns[-1].extra["head"])  # also
    np.testing.assert_array_equal(together[5][0].extra["head"], owns[5].extra["head"])  # kept


@pytest.mark.parametrize("algo", [DLoRA(), DLoRAFA(), DRoLoRA(mix="both")])
def test_factor_averaging_combines_a_host_in_batches_as_one_at_a_time(algo, monkeypatch):
    # 3- and 2-message nodes (the 3s split over two calls), a node whose inbox holds a zero
    # weight, one whose message lacks A (dlora_fa's), one with a rank-2 message, a float64
    # node: the unusual ones go one at a time; every result equals the node's own combine
    from decaf_ray.algorithms import stacking

    rng = np.random.default_rng(11)
    inboxes = [inbox_of(rng) for _ in range(5)] + [inbox_of(rng, m=2) for _ in range(2)]
    zero_weight = inbox_of(rng)
    zero_weight[1] = (0.0, zero_weight[1][1])
    without_A = [(0.5, adapter(rng)), (0.5, DLoRAFA().message(adapter(rng)))]
    low = adapter(rng)
    low = Adapter(
        A={m: a[:2] for m, a in low.A.items()},
        B={m: b[:, :2] for m, b in low.B.items()},
        extra=low.extra,
    )
    other_rank = [(0.5, adapter(rng)), (0.5, low)]
    inboxes += [zero_weight, without_A, other_rank]
    owns = [adapter(rng) for _ in inboxes]
    wide = inbox_of(rng)
    inboxes.append(
        [
            (
                w,
                Adapter(
                    A={m: a.astype(np.float64) for m, a in msg.A.items()},
                    B={m: b.astype(np.float64) for m, b in msg.B.items()},
                    extra=msg.extra,
                ),
            )
            for w, msg in wide
        ]
    )
    owns.append(inboxes[-1][0][1])
    monkeypatch.setattr(stacking, "STACK_BYTES", 3 * stacking.stack_bytes(owns[0], 3))
    calls = []
    batch = stacking._factor_average_batch
    monkeypatch.setattr(
        stacking, "_factor_average_batch", lambda o, i: calls.append(len(o)) or batch(o, i)
    )
    together = algo.combine_all(owns, inboxes)
    assert sorted(calls) == [1, 2, 2, 3]  # 3 messages: 3 + 2; 2 messages: 2; float64: 1
    for own, inbox, (new, stats) in zip(owns, inboxes, together):
        alone, alone_stats = algo.combine(own, inbox)
        for part in ("A", "B", "extra"):
            assert getattr(new, part).keys() == getattr(alone, part).keys()
            for key, value in getattr(alone, part).items():
                got = getattr(new, part)[key]
                assert got.dtype == value.dtype and got.shape == value.shape
                np.testing.assert_allclose(got, value, rtol=1e-6, atol=1e-7)
        assert stats["interference"] == pytest.approx(alone_stats["interference"], rel=1e-7)
    assert together[0][1]["interference"] > 0.0  # real gaps were compared, not zeros


def test_interference_sums_each_modules_dense_gap():
    rng = np.random.default_rng(1)
    inbox = inbox_of(rng, m=4)
    own = inbox[0][1]
    expected = 0.0
    for m in SHAPES:
        P = sum(w * product(msg, m) for w, msg in inbox)
        B_bar = sum(w * msg.B[m].astype(np.float64) for w, msg in inbox)
        A_bar = sum(w * msg.A[m].astype(np.float64) for w, msg in inbox)
        expected += np.linalg.norm(P - B_bar @ A_bar)
    _, stats = DLoRA().combine(own, inbox)
    _, decaf_stats = DeCAF().combine(own, inbox)
    assert stats["interference"] == pytest.approx(expected, rel=1e-6)
    assert decaf_stats["interference"] == pytest.approx(expected, rel=1e-6)
    # Eckart-Young, summed over modules: the TSVD's error never exceeds the interference
    assert np.sqrt(decaf_stats["tsvd_tail"]) <= expected


def test_dlora_fa_messages_without_A_have_no_interference():
    rng = np.random.default_rng(2)
    own = adapter(rng)
    alg = DLoRAFA()
    inbox = [(0.5, alg.message(own)), (0.5, alg.message(adapter(rng)))]
    inbox[1][1].B["q0"] *= 3.0
    _, stats = alg.combine(own, inbox)
    assert stats["interference"] == 0.0


def test_decaf_keeps_the_factor_average_when_every_B_is_zero():
    rng = np.random.default_rng(3)
    inbox = [(0.5, adapter(rng, zero_B=True)), (0.5, adapter(rng, zero_B=True))]
    new, stats = DeCAF().combine(inbox[0][1], inbox)
    for m in SHAPES:
        mean_A = 0.5 * (inbox[0][1].A[m] + inbox[1][1].A[m])
        np.testing.assert_allclose(new.A[m], mean_A, rtol=1e-6)
        assert not np.any(new.B[m])
    assert stats["top_singular_value"] == 0.0


def _with_rank(a: Adapter, r: int) -> Adapter:
    return Adapter(
        A={m: x[:r] for m, x in a.A.items()}, B={m: x[:, :r] for m, x in a.B.items()}, extra=a.extra
    )


@pytest.mark.parametrize("own_in_inbox", [True, False], ids=["combine", "rejoin"])
def test_decaf_zero_product_guard_keeps_the_nodes_own_rank(own_in_inbox):
    """model.ranks: the zero-product average pads and cuts as mix_adapters does, so messages
    of other ranks neither crash the mix nor change the node's rank (a rejoin's inbox holds
    only neighbours, all of another rank)."""
    rng = np.random.default_rng(7)
    own = _with_rank(adapter(rng, zero_B=True), 2)
    others = [adapter(rng, zero_B=True), _with_rank(adapter(rng, zero_B=True), 3)]
    inbox = (
        [(0.2, own), (0.4, others[0]), (0.4, others[1])]
        if own_in_inbox
        else [
            (0.5, others[0]),
            (0.5, others[1]),
        ]
    )
    new, _ = DeCAF().combine(own, inbox)
    ref = mix_adapters(inbox, own)
    for m in SHAPES:
        assert new.A[m].shape == (2, SHAPES[m][1]) and new.B[m].shape == (SHAPES[m][0], 2)
        np.testing.assert_allclose(new.A[m], ref.A[m], rtol=1e-6)
        assert not np.any(new.B[m])


def test_zero_weights_are_ignored():
    rng = np.random.default_rng(4)
    inbox = inbox_of(rng)
    with_zero = [*inbox, (0.0, adapter(rng))]
    a, _ = DeCAF().combine(inbox[0][1], inbox)
    b, _ = DeCAF().combine(inbox[0][1], with_zero)
    for m in SHAPES:
        np.testing.assert_array_equal(a.B[m], b.B[m])


def test_consensus_metrics_and_drift_match_dense_sums_over_modules():
    rng = np.random.default_rng(5)
    before = [adapter(rng) for _ in range(5)]
    after = [adapter(rng) for _ in range(5)]
    after[2] = before[2]  # a node that did not change
    got = consensus_metrics(after)
    drift = average_drift(before, after)
    want = {k: 0.0 for k in (*got, *drift)}
    for m in SHAPES:
        P = np.stack([product(a, m) for a in after])
        want["product_consensus"] += np.mean(np.sum((P - P.mean(0)) ** 2, axis=(1, 2)))
        for name in ("A", "B"):
            X = np.stack([getattr(a, name)[m].astype(np.float64) for a in after])
            X0 = np.stack([getattr(b, name)[m].astype(np.float64) for b in before])
            want[f"factor_consensus_{name}"] += np.mean(np.sum((X - X.mean(0)) ** 2, axis=(1, 2)))
            want[f"drift_{name}"] += np.linalg.norm(X.mean(0) - X0.mean(0))
        P0 = np.stack([product(b, m) for b in before])
        want["drift_product"] += np.linalg.norm(P.mean(0) - P0.mean(0))
    for key, value in {**got, **drift}.items():
        assert value == pytest.approx(want[key], rel=1e-6), key
    same = consensus_metrics([before[0]] * 4)
    assert same == {k: 0.0 for k in same}  # exactly zero at consensus
    assert average_drift(before, before) == {k: 0.0 for k in drift}


def test_batched_tsvd_equals_one_matrix_at_a_time():
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(5, 30, 12, dtype=torch.float64, generator=gen)
    A = torch.randn(5, 12, 20, dtype=torch.float64, generator=gen)
    U, S, Vh, s = tsvd_stacked(B, A, 4)
    for i in range(5):
        u, s1, vh, full = tsvd_stacked(B[i], A[i], 4)
        torch.testing.assert_close(S[i], s1)
        torch.testing.assert_close(s[i], full)
        torch.testing.assert_close(U[i] @ torch.diag(S[i]) @ Vh[i], u @ torch.diag(s1) @ vh)


@pytest.mark.parametrize("spread", [1.0, 1e-7])
def test_interference_from_the_qr_cores_matches_dense(spread):
    """Any weights (these sum to 0.9), and accurate to rounding of ||P|| near consensus
    (factors 1e-7 apart, weights summing to 1: the interference is about 1e-14 there)."""
    from decaf_ray.math.stacked import tsvd_and_interference_stacked

    gen = torch.Generator().manual_seed(1)
    m, d, r, k = 3, 20, 4, 15
    base_B = torch.randn(2, 1, d, r, dtype=torch.float64, generator=gen)
    base_A = torch.randn(2, 1, r, k, dtype=torch.float64, generator=gen)
    B = base_B + spread * torch.randn(2, m, d, r, dtype=torch.float64, generator=gen)
    A = base_A + spread * torch.randn(2, m, r, k, dtype=torch.float64, generator=gen)
    w = torch.tensor([0.5, 0.3, 0.1 if spread == 1.0 else 0.2], dtype=torch.float64)
    B_cat = torch.cat([w[j] * B[:, j] for j in range(m)], dim=-1)
    A_cat = torch.cat([A[:, j] for j in range(m)], dim=-2)
    *_, gap = tsvd_and_interference_stacked(B_cat, A_cat, w, r)
    P = B_cat @ A_cat
    B_bar = (w.reshape(-1, 1, 1) * B).sum(1)
    A_bar = (w.reshape(-1, 1, 1) * A).sum(1)
    dense = torch.linalg.matrix_norm(P - B_bar @ A_bar)
    torch.testing.assert_close(gap, dense, rtol=1e-6, atol=1e-14 * float(P.abs().max()))


@pytest.mark.parametrize("algo", [DLoRA(), DeCAF()])
def test_an_inbox_without_weight_keeps_the_nodes_whole_state(algo):
    # every weight zero (the node heard nothing, not even itself): factors and head stay its own
    rng = np.random.default_rng(5)
    own = adapter(rng)
    new, _ = algo.combine(own, [(0.0, adapter(rng)), (0.0, adapter(rng))])
    for part in ("A", "B", "extra"):
        for key, value in getattr(own, part).items():
            np.testing.assert_array_equal(getattr(new, part)[key], value)
