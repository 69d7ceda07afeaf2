"""Tests for decaf_ray.math: mixing, factored TSVD and factor-based metrics (all fast, seeded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from decaf_ray.math import (
    TSVD,
    factor_consensus_error,
    interference_norm,
    lowrank_sq_norm,
    mix,
    mix_all,
    payload_bytes,
    product_consensus_error,
    renormalise,
    split_factors,
    tsvd_dense,
    tsvd_factored,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers


def metropolis_hastings(G: nx.Graph) -> np.ndarray:
    """Pi_ij = 1/(1 + max(deg_i, deg_j)) on edges, the diagonal takes the rest of each row."""
    nodes = list(G.nodes())
    index = {v: i for i, v in enumerate(nodes)}
    n = len(nodes)
    Pi = np.zeros((n, n))
    for u, v in G.edges():
        i, j = index[u], index[v]
        Pi[i, j] = Pi[j, i] = 1.0 / (1.0 + max(G.degree(u), G.degree(v)))
    Pi[np.diag_indices(n)] = 1.0 - Pi.sum(axis=1)
    return Pi


def lambda_2(Pi: np.ndarray) -> float:
    """Second largest eigenvalue modulus of a symmetric doubly stochastic Pi."""
    n = Pi.shape[0]
    return float(np.max(np.abs(np.linalg.eigvalsh(Pi - np.full((n, n), 1.0 / n)))))


def connected_erdos_renyi(n: int, p: float, seed: int) -> nx.Graph:
    for s in range(seed, seed + 100):
        G = nx.erdos_renyi_graph(n, p, seed=s)
        if nx.is_connected(G):
            return G
    raise AssertionError("no connected Erdos-Renyi graph found")


GRAPHS = {
    "ring12": lambda: nx.cycle_graph(12),
    "grid3x4": lambda: nx.grid_2d_graph(3, 4),
    "torus4x5": lambda: nx.grid_2d_graph(4, 5, periodic=True),
    "erdos_renyi": lambda: connected_erdos_renyi(15, 0.3, seed=7),
    "complete9": lambda: nx.complete_graph(9),
}


def random_factors(
    rng: np.random.Generator, m: int, d: int, k: int, r: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    Bs = [rng.standard_normal((d, r)) for _ in range(m)]
    As = [rng.standard_normal((r, k)) for _ in range(m)]
    return Bs, As


def dense_sum(Bs, As, w) -> np.ndarray:
    return sum(w_j * B @ A for w_j, B, A in zip(w, Bs, As, strict=True))


def dense_consensus(Xs) -> float:
    M = sum(Xs) / len(Xs)
    return float(sum(np.sum((X - M) ** 2) for X in Xs) / len(Xs))


def reconstruct(t: TSVD) -> np.ndarray:
    return (t.U * t.S) @ t.Vh


# ---------------------------------------------------------------- mixing


def test_mh_weights_are_symmetric_doubly_stochastic():
    for name, make in GRAPHS.items():
        Pi = metropolis_hastings(make())
        assert np.allclose(Pi, Pi.T), name
        assert np.allclose(Pi.sum(axis=1), 1.0, atol=1e-14), name
        assert np.all(Pi >= 0) and np.all(np.diag(Pi) > 0), name
        assert lambda_2(Pi) < 1.0 - 1e-9, name


def test_mix_is_weighted_sum_and_preserves_dtype_and_inputs():
    rng = np.random.default_rng(0)
    Xs = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(3)]
    before = [X.copy() for X in Xs]
    w = [0.5, 0.0, 0.25]
    out = mix(w, Xs)
    assert out.dtype == np.float32 and out.shape == (4, 5)
    expected = 0.5 * Xs[0].astype(np.float64) + 0.25 * Xs[2].astype(np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    for X, X0 in zip(Xs, before, strict=True):
        np.testing.assert_array_equal(X, X0)
    assert not np.shares_memory(mix([1.0], [Xs[0]]), Xs[0])


def test_mix_errors_name_lengths_and_shapes():
    with pytest.raises(ValueError, match=r"2 weights but 3"):
        mix([0.5, 0.5], [np.zeros(2)] * 3)
    with pytest.raises(ValueError, match="shape"):
        mix([0.5, 0.5], [np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match="at least one"):
        mix([], [])
    with pytest.raises(ValueError, match="3 x 3 but got 2"):
        mix_all(np.eye(3), [np.zeros(2)] * 2)
    with pytest.raises(ValueError, match="square"):
        mix_all(np.ones((2, 3)), [np.zeros(2)] * 2)


def test_mix_all_matches_matrix_product_and_skips_zero_weights():
    rng = np.random.default_rng(1)
    Pi = metropolis_hastings(GRAPHS["ring12"]())
    Xs = [rng.standard_normal((3, 2)) for _ in range(12)]
    # A non-neighbour's array full of NaN must not leak into node 0 (its weight is 0).
    Xs_nan = list(Xs)
    Xs_nan[6] = np.full((3, 2), np.nan)
    out = mix_all(Pi, Xs_nan)
    expected = np.einsum("ij,jab->iab", Pi, np.stack(Xs))
    np.testing.assert_allclose(out[0], expected[0], rtol=1e-13, atol=1e-15)
    assert np.all(np.isnan(out[6]))
    np.testing.assert_allclose(np.stack(mix_all(Pi, Xs)), expected, rtol=1e-13, atol=1e-15)


def test_renormalise():
    out = renormalise([1, 3])
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [0.25, 0.75])
    with pytest.raises(ValueError, match="positive sum"):
        renormalise([0.0, 0.0])
    with pytest.raises(ValueError, match="positive sum"):
        renormalise([1.0, -2.0])


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_mixing_keeps_network_average_of_each_factor(graph):
    rng = np.random.default_rng(2)
    Pi = metropolis_hastings(GRAPHS[graph]())
    n = Pi.shape[0]
    Bs, As = random_factors(rng, n, d=7, k=5, r=3)
    for _ in range(3):
        B_mean, A_mean = np.mean(Bs, axis=0), np.mean(As, axis=0)
        Bs, As = mix_all(Pi, Bs), mix_all(Pi, As)
        np.testing.assert_allclose(np.mean(Bs, axis=0), B_mean, rtol=0, atol=1e-13)
        np.testing.assert_allclose(np.mean(As, axis=0), A_mean, rtol=0, atol=1e-13)


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_gossip_contracts_factor_consensus_error_by_lambda2_squared(graph):
    rng = np.random.default_rng(3)
    Pi = metropolis_hastings(GRAPHS[graph]())
    n = Pi.shape[0]
    lam2 = lambda_2(Pi)
    Bs, As = random_factors(rng, n, d=6, k=8, r=2)
    for _ in range(4):
        for Xs in (Bs, As):
            before = factor_consensus_error(Xs)
            after = factor_consensus_error(mix_all(Pi, Xs))
            assert before > 0
            assert after <= lam2**2 * before * (1 + 1e-12) + 1e-28
        Bs, As = mix_all(Pi, Bs), mix_all(Pi, As)
    if graph.startswith("ring"):
        # not trivially satisfied: a ring mixes slowly, so the bound is far from zero
        assert lam2 > 0.9


def test_gossip_on_complete_graph_with_uniform_weights_reaches_consensus_in_one_round():
    rng = np.random.default_rng(4)
    n = 9
    Pi = metropolis_hastings(nx.complete_graph(n))
    np.testing.assert_allclose(Pi, np.full((n, n), 1.0 / n), atol=1e-15)
    assert lambda_2(Pi) < 1e-12
    Xs = [rng.standard_normal((5, 4)) for _ in range(n)]
    before = factor_consensus_error(Xs)
    after = factor_consensus_error(mix_all(Pi, Xs))
    assert before > 1.0
    assert after <= 1e-24 * before


# ---------------------------------------------------------------- TSVD

# (d, k, r, m, rank)
TSVD_SHAPES = [
    (20, 30, 2, 3, 4),  # d != k, m r > rank
    (30, 20, 4, 5, 3),  # d > k
    (6, 40, 3, 4, 5),  # m r = 12 > d
    (40, 5, 3, 4, 4),  # m r = 12 > k
    (25, 18, 2, 1, 4),  # m r = 2 < rank: padding
    (12, 12, 4, 10, 12),  # rank = min(d, k) < m r
]


@pytest.mark.parametrize("shape", TSVD_SHAPES, ids=str)
def test_tsvd_factored_matches_dense(shape):
    d, k, r, m, rank = shape
    rng = np.random.default_rng(5)
    Bs, As = random_factors(rng, m, d, k, r)
    w = rng.uniform(-1.0, 2.0, m)
    P = dense_sum(Bs, As, w)
    fac, den = tsvd_factored(Bs, As, w, rank), tsvd_dense(P, rank)
    for t in (fac, den):
        assert t.U.shape == (d, rank) and t.S.shape == (rank,) and t.Vh.shape == (rank, k)
        assert t.all_singular_values.shape == (min(d, k),)
        assert t.rank == rank
    scale = np.linalg.norm(P)
    np.testing.assert_allclose(fac.S, den.S, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(
        fac.all_singular_values, den.all_singular_values, rtol=0, atol=1e-12 * scale
    )
    np.testing.assert_allclose(reconstruct(fac), reconstruct(den), rtol=0, atol=1e-11 * scale)
    assert fac.tail_energy == pytest.approx(den.tail_energy, rel=1e-9, abs=1e-20 * scale**2)
    # the kept singular vectors are orthonormal (where S is non-zero)
    q = int(np.sum(fac.S > 1e-12 * scale))
    np.testing.assert_allclose(fac.U[:, :q].T @ fac.U[:, :q], np.eye(q), atol=1e-12)
    np.testing.assert_allclose(fac.Vh[:q] @ fac.Vh[:q].T, np.eye(q), atol=1e-12)
    if m * r < rank:
        assert q == m * r and np.all(fac.S[q:] == 0) and fac.tail_energy == 0.0


def test_stacked_tsvd_takes_reflector_vectors_where_the_kept_spectrum_is_tiny():
    """A batch of two products: a generic one (its vectors by GEMM) and one of rank 2 asked
    for rank 4, whose last kept singular values are rounding noise: dividing by them would
    give garbage, so its vectors come from the QR's reflectors and stay orthonormal."""
    import torch

    from decaf_ray.math.stacked import SEPARATED, tsvd_stacked

    rng = np.random.default_rng(11)
    d, k, R, rank = 14, 11, 6, 4
    B_cat, A_cat = rng.normal(size=(2, d, R)), rng.normal(size=(2, R, k))
    B_cat[1, :, 2:] = B_cat[1, :, :2] @ rng.normal(size=(2, R - 2))  # P_1 has rank 2
    U, S, Vh, s = (x.numpy() for x in tsvd_stacked(torch.tensor(B_cat), torch.tensor(A_cat), rank))
    assert s[0, rank - 1] > SEPARATED * s[0, 0] and s[1, rank - 1] < SEPARATED * s[1, 0]
    for j in range(2):
        P = B_cat[j] @ A_cat[j]
        want = tsvd_dense(P, rank)
        np.testing.assert_allclose(S[j], want.S, atol=1e-12 * np.linalg.norm(P))
        got = (U[j] * S[j]) @ Vh[j]
        np.testing.assert_allclose(got, reconstruct(want), atol=1e-11 * np.linalg.norm(P))
        np.testing.assert_allclose(U[j].T @ U[j], np.eye(rank), atol=1e-12)
        np.testing.assert_allclose(Vh[j] @ Vh[j].T, np.eye(rank), atol=1e-12)


def test_tsvd_factored_skips_zero_weights_and_handles_all_zero():
    rng = np.random.default_rng(6)
    Bs, As = random_factors(rng, 4, 10, 9, 2)
    Bs[1] = np.full_like(Bs[1], np.nan)  # must be ignored: weight 0
    w = np.array([0.5, 0.0, 0.3, 0.2])
    fac = tsvd_factored(Bs, As, w, 3)
    P = dense_sum([Bs[0], Bs[2], Bs[3]], [As[0], As[2], As[3]], w[[0, 2, 3]])
    np.testing.assert_allclose(reconstruct(fac), reconstruct(tsvd_dense(P, 3)), atol=1e-12)
    zero = tsvd_factored(Bs, As, np.zeros(4), 3)
    assert zero.U.shape == (10, 3) and zero.Vh.shape == (3, 9)
    assert np.all(zero.S == 0) and zero.tail_energy == 0.0
    assert np.all(zero.all_singular_values == 0)


def test_tsvd_keeps_float32_and_does_not_mutate_inputs():
    rng = np.random.default_rng(7)
    Bs, As = random_factors(rng, 3, 8, 6, 2)
    Bs = [B.astype(np.float32) for B in Bs]
    As = [A.astype(np.float32) for A in As]
    copies = [X.copy() for X in Bs + As]
    t = tsvd_factored(Bs, As, [0.2, 0.3, 0.5], 2)
    assert t.U.dtype == t.S.dtype == t.Vh.dtype == np.float32
    assert t.all_singular_values.dtype == np.float64
    for X, X0 in zip(Bs + As, copies, strict=True):
        np.testing.assert_array_equal(X, X0)
    B, A = split_factors(t, "balanced")
    assert B.dtype == A.dtype == np.float32


def test_tsvd_input_errors():
    rng = np.random.default_rng(8)
    Bs, As = random_factors(rng, 2, 5, 4, 2)
    with pytest.raises(ValueError, match="3 weights but 2"):
        tsvd_factored(Bs, As, [1.0, 1.0, 1.0], 2)
    with pytest.raises(ValueError, match="rank"):
        tsvd_factored(Bs, As, [1.0, 1.0], 0)
    with pytest.raises(ValueError, match=r"pair 1"):
        tsvd_factored([Bs[0], Bs[1][:, :1]], As, [1.0, 1.0], 2)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_tail_energy_is_the_truncation_error(rank):
    d, k, r, m = 15, 11, 2, 4
    rng = np.random.default_rng(9)
    Bs, As = random_factors(rng, m, d, k, r)
    w = renormalise(rng.random(m))
    P = dense_sum(Bs, As, w)
    t = tsvd_factored(Bs, As, w, rank)
    sigma = np.linalg.svd(P, compute_uv=False)
    dropped = float(np.sqrt(np.sum(sigma[rank:] ** 2)))
    err = float(np.linalg.norm(P - reconstruct(t)))
    assert dropped > 0.1  # a real truncation, not a trivially exact one
    assert err == pytest.approx(np.sqrt(t.tail_energy), rel=1e-9)
    assert err == pytest.approx(dropped, rel=1e-9)


def test_exact_low_rank_sum_is_recovered():
    rng = np.random.default_rng(10)
    # three nodes sharing A: the weighted product has rank r, so TSVD_r is exact
    A = rng.standard_normal((2, 9))
    Bs = [rng.standard_normal((7, 2)) for _ in range(3)]
    w = [0.2, 0.5, 0.3]
    t = tsvd_factored(Bs, [A, A, A], w, 2)
    P = dense_sum(Bs, [A, A, A], w)
    np.testing.assert_allclose(reconstruct(t), P, atol=1e-12)
    assert t.tail_energy < 1e-24 * np.sum(P**2)


@pytest.mark.parametrize("seed", range(5))
def test_eckart_young_tsvd_never_worse_than_factor_averaging(seed):
    rng = np.random.default_rng(100 + seed)
    m, d, k, r = 5, 12, 10, 2
    Bs, As = random_factors(rng, m, d, k, r)
    w = renormalise(rng.random(m))
    t = tsvd_factored(Bs, As, w, r)
    tsvd_err = np.sqrt(t.tail_energy)
    interference = interference_norm(Bs, As, w)
    assert tsvd_err <= interference * (1 + 1e-12)
    # and the dense picture agrees: B_bar A_bar has rank <= r, so it cannot beat TSVD_r
    P = dense_sum(Bs, As, w)
    B_bar, A_bar = mix(w, Bs), mix(w, As)
    assert np.linalg.norm(P - reconstruct(t)) <= np.linalg.norm(P - B_bar @ A_bar) * (1 + 1e-12)


# ---------------------------------------------------------------- split


@pytest.mark.parametrize("mode", ["balanced", "all_in_B"])
def test_split_factors_reproduce_product(mode):
    rng = np.random.default_rng(11)
    Bs, As = random_factors(rng, 3, 9, 7, 2)
    t = tsvd_factored(Bs, As, [0.3, 0.3, 0.4], 2)
    B, A = split_factors(t, mode)
    assert B.shape == (9, 2) and A.shape == (2, 7)
    np.testing.assert_allclose(B @ A, reconstruct(t), atol=1e-12)
    if mode == "balanced":
        assert np.linalg.norm(B) == pytest.approx(np.linalg.norm(A), rel=1e-12)
    else:
        np.testing.assert_allclose(A @ A.T, np.eye(2), atol=1e-12)
        assert np.linalg.norm(B) == pytest.approx(np.linalg.norm(t.S), rel=1e-12)
    assert not np.shares_memory(A, t.Vh) and not np.shares_memory(B, t.U)


def test_split_factors_unknown_mode_names_it():
    t = tsvd_dense(np.eye(3), 2)
    with pytest.raises(ValueError, match="all_in_A"):
        split_factors(t, "all_in_A")  # type: ignore[arg-type]


# ---------------------------------------------------------------- metrics


def test_lowrank_sq_norm_matches_dense():
    rng = np.random.default_rng(12)
    Bs, As = random_factors(rng, 4, 13, 8, 3)
    w = rng.uniform(-1, 1, 4)
    assert lowrank_sq_norm(Bs, As, w) == pytest.approx(np.sum(dense_sum(Bs, As, w) ** 2), 1e-12)
    assert lowrank_sq_norm(Bs, As) == pytest.approx(
        np.sum(dense_sum(Bs, As, np.ones(4)) ** 2), rel=1e-12
    )
    # mixed ranks are fine for a plain norm
    B2, A2 = rng.standard_normal((13, 1)), rng.standard_normal((1, 8))
    assert lowrank_sq_norm([Bs[0], B2], [As[0], A2], [1.0, -2.0]) == pytest.approx(
        np.sum((Bs[0] @ As[0] - 2.0 * B2 @ A2) ** 2), rel=1e-12
    )
    assert lowrank_sq_norm([Bs[0]], [As[0]], [0.0]) == 0.0
    with pytest.raises(ValueError, match="2 weights but 4"):
        lowrank_sq_norm(Bs, As, [1.0, 1.0])


def test_product_consensus_error_matches_dense():
    rng = np.random.default_rng(13)
    Bs, As = random_factors(rng, 6, 11, 9, 2)
    dense = dense_consensus([B @ A for B, A in zip(Bs, As, strict=True)])
    assert dense > 1.0
    assert product_consensus_error(Bs, As) == pytest.approx(dense, rel=1e-10)


def test_product_consensus_error_is_accurate_near_consensus():
    rng = np.random.default_rng(14)
    B0, A0 = rng.standard_normal((30, 4)), rng.standard_normal((4, 25))
    assert product_consensus_error([B0] * 5, [A0] * 5) == 0.0
    eps = 1e-7
    Bs = [B0 + eps * rng.standard_normal(B0.shape) for _ in range(5)]
    As = [A0 + eps * rng.standard_normal(A0.shape) for _ in range(5)]
    dense = dense_consensus([B @ A for B, A in zip(Bs, As, strict=True)])
    # dense ~ 1e-11 against ||BA||^2 ~ 1e4: a naive difference of norms would be all rounding
    assert product_consensus_error(Bs, As) == pytest.approx(dense, rel=1e-6)


def test_factor_consensus_error_matches_dense():
    rng = np.random.default_rng(15)
    Xs = [rng.standard_normal((4, 6)) for _ in range(7)]
    assert factor_consensus_error(Xs) == pytest.approx(dense_consensus(Xs), rel=1e-12)
    assert factor_consensus_error([Xs[0]] * 3) == 0.0
    with pytest.raises(ValueError, match="shape"):
        factor_consensus_error([np.zeros((2, 2)), np.zeros((2, 3))])


@pytest.mark.parametrize("seed", range(3))
def test_interference_identity_and_norm(seed):
    rng = np.random.default_rng(200 + seed)
    m, d, k, r = 4, 10, 8, 3
    Bs, As = random_factors(rng, m, d, k, r)
    w = renormalise(rng.random(m))
    P = dense_sum(Bs, As, w)
    B_bar, A_bar = mix(w, Bs), mix(w, As)
    cross = sum(w_j * (B - B_bar) @ (A - A_bar) for w_j, B, A in zip(w, Bs, As, strict=True))
    np.testing.assert_allclose(P - B_bar @ A_bar, cross, atol=1e-12)
    assert np.linalg.norm(cross) > 0.1
    assert interference_norm(Bs, As, w) == pytest.approx(np.linalg.norm(cross), rel=1e-10)


def test_interference_norm_with_weights_not_summing_to_one():
    rng = np.random.default_rng(16)
    Bs, As = random_factors(rng, 3, 6, 5, 2)
    w = np.array([0.7, 0.0, 0.9])
    P = dense_sum(Bs, As, w)
    expected = np.linalg.norm(P - mix(w, Bs) @ mix(w, As))
    assert interference_norm(Bs, As, w) == pytest.approx(expected, rel=1e-10)


def test_interference_vanishes_when_A_is_shared():
    # dLoRA-FA: a common frozen A means factor averaging is exact
    rng = np.random.default_rng(17)
    A = rng.standard_normal((3, 40))
    Bs = [rng.standard_normal((50, 3)) for _ in range(4)]
    w = np.array([0.25, 0.25, 0.25, 0.25])
    assert interference_norm(Bs, [A] * 4, w) == 0.0
    w = renormalise(rng.random(4))
    P_norm = np.sqrt(lowrank_sq_norm(Bs, [A] * 4, w))
    assert interference_norm(Bs, [A] * 4, w) <= 1e-14 * P_norm


def test_payload_bytes():
    arrays = [np.zeros((4, 8), dtype=np.float32), np.zeros(3, dtype=np.float64)]
    assert payload_bytes(arrays) == 4 * 8 * 4 + 3 * 8
    assert payload_bytes([]) == 0


# ---------------------------------------------------------------- packaging


def test_import_pulls_in_no_ray():
    code = "import decaf_ray.math, sys; assert 'ray' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
