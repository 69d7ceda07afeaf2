"""decaf's factor alignment (algorithm.align): the Procrustes kernel, the combine, and a run.

The split of a TSVD is defined up to B G, G^-1 A; alignment picks, among orthogonal G, the
one closest to the node's own factors, and must never change the product B A."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import net
from decaf_ray.algorithms import Adapter
from decaf_ray.algorithms.decaf import DeCAF
from decaf_ray.math.stacked import align_stacked

M, D, R, K = 3, 14, 4, 9  # a stack of 3 modules, B (14 x 4), A (4 x 9)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _orthogonal(seed: int, reflect: bool = False) -> torch.Tensor:
    """A random (M, R, R) stack of orthogonal matrices (det -1 when ``reflect``)."""
    Q, _ = torch.linalg.qr(_randn(M, R, R, seed=seed))
    if reflect:
        Q[..., 0] = -Q[..., 0]
    return Q


def _distance(B: torch.Tensor, A: torch.Tensor, B_ref: torch.Tensor, A_ref: torch.Tensor):
    """||B - B_ref||_F^2 + ||A - A_ref||_F^2 per module: (M,)."""
    return (B - B_ref).square().sum((-2, -1)) + (A - A_ref).square().sum((-2, -1))


def test_alignment_keeps_the_product_and_is_the_closest_rotation():
    B, A = _randn(M, D, R, seed=0), _randn(M, R, K, seed=1)
    B_old, A_old = _randn(M, D, R, seed=2), _randn(M, R, K, seed=3)
    B_al, A_al = align_stacked(B, A, B_old, A_old)
    torch.testing.assert_close(B_al @ A_al, B @ A, rtol=0, atol=1e-12)
    best = _distance(B_al, A_al, B_old, A_old)
    assert (best <= _distance(B, A, B_old, A_old)).all()  # no worse than not aligning
    for seed in range(20):  # nor than any other orthogonal turn, rotations and reflections
        Q = _orthogonal(seed, reflect=seed % 2 == 1)
        assert (best <= _distance(B @ Q, Q.mT @ A, B_old, A_old) + 1e-12).all()


@pytest.mark.parametrize("reflect", [False, True])
def test_alignment_undoes_an_exact_rotation(reflect):
    B_old, A_old = _randn(M, D, R, seed=4), _randn(M, R, K, seed=5)
    Q = _orthogonal(6, reflect)
    B_al, A_al = align_stacked(B_old @ Q, Q.mT @ A_old, B_old, A_old)  # old factors, turned
    torch.testing.assert_close(B_al, B_old, rtol=0, atol=1e-10)
    torch.testing.assert_close(A_al, A_old, rtol=0, atol=1e-10)


def _adapter(rng: np.random.Generator) -> Adapter:
    shapes = {"q": (12, 10), "v": (12, 10), "out": (7, 9)}
    return Adapter(
        A={m: rng.standard_normal((R, k)).astype(np.float32) for m, (_, k) in shapes.items()},
        B={m: rng.standard_normal((d, R)).astype(np.float32) for m, (d, _) in shapes.items()},
        extra={"head": rng.standard_normal((3, 5)).astype(np.float32)},
    )


@pytest.mark.parametrize("split", ["balanced", "all_in_B"])
def test_aligned_combine_has_the_same_products_closer_to_the_nodes_own_factors(split):
    rng = np.random.default_rng(7)
    inbox = [(float(w), _adapter(rng)) for w in rng.dirichlet(np.ones(3))]
    own = inbox[0][1]
    plain, stats = DeCAF(sv_split=split).combine(own, inbox)
    aligned, aligned_stats = DeCAF(sv_split=split, align=True).combine(own, inbox)
    assert aligned_stats == stats
    for m in own.modules:
        f64 = {k: x[m].astype(np.float64) for k, x in (("B", aligned.B), ("A", aligned.A))}
        np.testing.assert_allclose(
            f64["B"] @ f64["A"], plain.B[m].astype(np.float64) @ plain.A[m], atol=1e-5
        )
        assert aligned.B[m].dtype == np.float32 and aligned.A[m].shape == own.A[m].shape

        def dist(a: Adapter, m: str = m) -> float:
            return float(np.sum((a.B[m] - own.B[m]) ** 2) + np.sum((a.A[m] - own.A[m]) ** 2))

        assert dist(aligned) <= dist(plain) + 1e-6
    np.testing.assert_array_equal(aligned.extra["head"], plain.extra["head"])


def test_a_tiny_decaf_run_with_alignment_completes(run_local):
    from conftest import tiny_config
    from decaf_ray.algorithms import make_algorithm

    assert make_algorithm(tiny_config(algorithm__align=True).algorithm).align
    assert not make_algorithm(tiny_config().algorithm).align  # off unless asked for
    frame = run_local(algorithm__name="decaf", algorithm__align=True)
    acc = net(frame, "mean_node_acc")
    assert list(acc.index) == [1, 2] and np.isfinite(acc).all()
    tail = frame[frame.metric == "tsvd_tail"]  # one row per node and round
    assert len(tail) == 2 * 4 and (tail.value >= 0).all()
