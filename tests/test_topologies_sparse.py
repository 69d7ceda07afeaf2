"""Sparse mixing matrices: same weights as dense, same problems found, eigen-solvers checked
against dense eigvalsh and closed forms, and builders that scale (issue 13)."""

from __future__ import annotations

import math
import tracemalloc

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

import topologies as topo
from topologies import build_graph, check_mixing, mixing_matrix, spectral_gap
from topologies import spectrum as spec
from topologies.sparse import SPARSE_ABOVE_N, prefers_sparse

SPARSE_RULES = ["uniform", "metropolis_hastings", "max_degree", "laplacian"]
CASES = [
    ("ring", 15, {}),
    ("two_hubs", 9, {}),
    ("star", 11, {}),
    ("torus", 16, {}),
    ("erdos_renyi", 40, {}),
    ("random_regular", 16, {"degree": 3}),
    ("watts_strogatz", 17, {}),
    ("exponential", 13, {}),
]


def _dense_modulus(Pi: np.ndarray) -> float:
    return float(np.sort(np.abs(np.linalg.eigvalsh(Pi)))[-2])


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("rule", SPARSE_RULES)
@pytest.mark.parametrize(("name", "n", "params"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_sparse_rule_has_the_dense_rules_weights(name, n, params, rule):
    G = build_graph(name, n, **params)
    dense = mixing_matrix(G, rule)
    sparse = mixing_matrix(G, rule, sparse=True)
    assert isinstance(dense, np.ndarray) and isinstance(sparse, sp.csr_array)
    got = sparse.toarray()
    off = ~np.eye(n, dtype=bool)
    tol = 1e-12 if rule == "laplacian" else 0.0  # eigsh's lambda_max vs eigvalsh's
    np.testing.assert_allclose(got[off], dense[off], rtol=tol, atol=0.0)
    np.testing.assert_allclose(np.diag(got), np.diag(dense), rtol=0.0, atol=1e-15)


def test_dimat_and_edge_weights_in_both_formats():
    G = topo.two_hubs(16)
    np.testing.assert_array_equal(
        mixing_matrix(G, "dimat", sparse=True).toarray(), mixing_matrix(G, "dimat")
    )
    W = topo.ring(6)
    nx.set_edge_attributes(W, 0.3, "weight")
    np.testing.assert_allclose(
        mixing_matrix(W, "edge_weights", sparse=True).toarray(),
        mixing_matrix(W, "edge_weights"),
        rtol=0.0,
        atol=1e-15,
    )


def test_format_follows_the_documented_rule():
    assert isinstance(mixing_matrix(topo.ring(SPARSE_ABOVE_N), "uniform"), np.ndarray)
    assert isinstance(mixing_matrix(topo.ring(SPARSE_ABOVE_N + 1), "uniform"), sp.csr_array)
    assert prefers_sparse(4096, 3 * 4096) and not prefers_sparse(2048, 3 * 2048)
    assert not prefers_sparse(4096, 4096 * 4096 // 10)  # 10% fill: dense


# --------------------------------------------------------------------------- checks


def _broken(n: int = 5) -> list[tuple[nx.Graph, np.ndarray]]:
    G = topo.ring(n)
    base = mixing_matrix(G, "metropolis_hastings")
    asym, row, neg, off_graph, nan = (base.copy() for _ in range(5))
    asym[0, 1], asym[0, 0] = 0.5, 1 / 6
    row[2, 2] -= 0.1
    neg[0, 0], neg[0, 1], neg[1, 0], neg[1, 1] = 1.1, -0.1, -0.1, 1.1
    off_graph[1, 3] = off_graph[3, 1] = 0.1
    off_graph[1, 1] -= 0.1
    off_graph[3, 3] -= 0.1
    nan[2, 4] = np.nan
    split = nx.disjoint_union(topo.ring(4), topo.ring(5))
    cases = [(G, m) for m in (asym, row, neg, off_graph, nan)]
    return [*cases, (split, mixing_matrix(split, "metropolis_hastings")), (G, np.eye(n))]


@pytest.mark.parametrize("case", range(7))
def test_check_on_sparse_finds_what_dense_finds(case):
    G, Pi = _broken()[case]
    dense, sparse = check_mixing(Pi, G), check_mixing(sp.csr_array(Pi), G)
    assert not dense.ok
    assert sparse.problems == dense.problems
    assert sparse.symmetric == dense.symmetric and sparse.connected == dense.connected
    assert sparse.within_support == dense.within_support
    assert sparse.nonnegative == dense.nonnegative
    assert sparse.doubly_stochastic == dense.doubly_stochastic


def test_check_of_a_large_broken_sparse_matrix_names_each_problem():
    n = 3000
    G = topo.ring(n)
    Pi = mixing_matrix(G, "metropolis_hastings").tolil()
    Pi[10, 500] = 0.2  # off the graph, not symmetric, row 10 sums to 1.2
    Pi[7, 7] = -0.01  # negative, row 7 off
    report = check_mixing(Pi.tocsr(), G)
    assert not report.symmetric and not report.within_support and not report.nonnegative
    text = "\n".join(report.problems)
    assert "Pi[10,500]=0.2 but Pi[500,10]=0" in text
    assert "row 7 sums to" in text and "(and 1 more rows)" in text
    assert "Pi[7,7]=-0.01 is negative" in text
    assert "Pi[10,500]=0.2 but (10,500) is not an edge" in text
    assert math.isnan(report.spectral_gap)  # a broken large Pi gets no eigen-solve
    split = nx.disjoint_union(topo.ring(1500), topo.ring(1500))
    report = check_mixing(mixing_matrix(split, "metropolis_hastings"), split)
    assert report.problems == (
        "the graph is disconnected (2 components): gossip cannot reach consensus",
    )
    assert report.spectral_gap == pytest.approx(0.0, abs=1e-12)  # |lambda_2| = 1


# --------------------------------------------------------------------------- spectrum


@pytest.mark.parametrize(
    ("name", "params"),
    [("ring", {}), ("torus", {}), ("erdos_renyi", {}), ("watts_strogatz", {}), ("two_hubs", {})],
)
def test_both_sparse_solvers_match_eigvalsh(name, params):
    G = build_graph(name, 400, **params)
    Pi = mixing_matrix(G, "metropolis_hastings", sparse=True)
    expected = _dense_modulus(Pi.toarray())
    gap = 1.0 - expected
    assert 1.0 - spec._lanczos_modulus(Pi) == pytest.approx(gap, rel=1e-6)
    assert 1.0 - spec._shift_invert_modulus(Pi) == pytest.approx(gap, rel=1e-6)


def test_shift_invert_finds_an_eigenvalue_near_minus_one():
    n, eps = 600, 1e-5  # Pi = eps I + (1 - eps) (S + S^T) / 2: lambda_min = 2 eps - 1
    ring = nx.to_scipy_sparse_array(topo.ring(n), format="csr")
    Pi = sp.csr_array(eps * sp.eye_array(n) + (1 - eps) * ring / 2)
    assert 1.0 - spec._shift_invert_modulus(Pi) == pytest.approx(2 * eps, rel=1e-6)
    assert 1.0 - spec._shift_invert_modulus(Pi) == pytest.approx(
        1.0 - _dense_modulus(Pi.toarray()), rel=1e-6
    )


@pytest.mark.parametrize(
    ("name", "closed_form", "banded"),
    [
        ("ring", lambda n: 2 / 3 * (1 - math.cos(2 * math.pi / n)), True),  # weights 1/3
        ("torus", lambda n: 2 / 5 * (1 - math.cos(2 * math.pi / 60)), True),  # 50 x 60, 1/5
    ],
)
def test_spectral_gap_of_3000_nodes_matches_the_closed_form(name, closed_form, banded):
    n = 3000
    Pi = mixing_matrix(build_graph(name, n), "metropolis_hastings")
    assert isinstance(Pi, sp.csr_array)
    assert spec.banded_lu_is_cheap(Pi) == banded
    assert spectral_gap(Pi) == pytest.approx(closed_form(n), rel=1e-6)


def test_spectral_gap_of_2200_node_erdos_renyi_matches_eigvalsh():
    G = build_graph("erdos_renyi", 2200)  # just above the dense limit: one eigvalsh
    Pi = mixing_matrix(G, "metropolis_hastings")
    assert not spec.banded_lu_is_cheap(Pi)  # the Lanczos path
    report = check_mixing(Pi, G)
    assert report.ok
    assert report.spectral_gap == pytest.approx(1.0 - _dense_modulus(Pi.toarray()), rel=1e-6)


# --------------------------------------------------------------------------- scale


def test_sparse_pipeline_at_10000_nodes_stays_small():
    n = 10_000
    G = topo.ring(n)
    tracemalloc.start()
    Pi = mixing_matrix(G, "metropolis_hastings")
    report = check_mixing(Pi, G)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.ok and report.spectral_gap == pytest.approx(
        2 / 3 * (1 - math.cos(2 * math.pi / n)), rel=1e-6
    )
    assert peak < 32 * 2**20  # one dense 10,000 x 10,000 array would be 800 MB


def test_erdos_renyi_above_the_threshold_never_visits_every_pair(monkeypatch):
    def quadratic(*args, **kwargs):
        raise AssertionError("gnp_random_graph loops over n^2 pairs")

    small = topo.erdos_renyi(50, seed=3)  # the graphs seeds gave before: gnp_random_graph
    p = 2 * math.log(50) / 50
    expected = next(
        g for s in range(3, 103) if nx.is_connected(g := nx.gnp_random_graph(50, p, seed=s))
    )
    assert sorted(small.edges) == sorted(expected.edges)
    monkeypatch.setattr(nx, "gnp_random_graph", quadratic)
    n = 5000
    G = topo.erdos_renyi(n, seed=1)
    assert nx.is_connected(G)
    mean_edges = 2 * math.log(n) / n * n * (n - 1) / 2
    assert abs(G.number_of_edges() - mean_edges) < 0.05 * mean_edges


def test_complete_refuses_many_nodes_and_names_the_fix():
    with pytest.raises(ValueError, match=r"complete: n=2049 > 2048.*exponential"):
        topo.complete(2049)


def test_listing_prints_small_gaps_in_scientific_notation():
    from decaf_ray.cli import _gap_cell

    assert _gap_cell(0.0507).strip() == "0.0507"
    assert _gap_cell(4.902285e-08).strip() == "4.902e-08"


def test_make_graph_gives_a_sparse_checked_pi_for_many_nodes():
    from decaf_ray.config import config_from_dict
    from decaf_ray.prepare import make_graph

    cfg = config_from_dict({"topology": {"name": "ring", "n": 4096}})
    graph, Pi, gap = make_graph(cfg)
    assert isinstance(Pi, sp.csr_array) and Pi.shape == (4096, 4096)
    assert Pi.nnz == 3 * 4096 and graph.number_of_nodes() == 4096
    assert gap == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / 4096)), rel=1e-6)
