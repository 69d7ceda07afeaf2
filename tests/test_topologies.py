"""Tests for the pure `topologies` package: graph builders, mixing rules and checks."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import topologies as topo
from topologies import (
    BUILDERS,
    MIXING_RULES,
    MixingError,
    build_graph,
    check_mixing,
    mixing_matrix,
    spectral_gap,
    validate_mixing,
)

# (topology, n, params): every builder at n=16 plus odd sizes where the builder allows them.
GRAPH_CASES = [
    ("ring", 16, {}),
    ("ring", 15, {}),
    ("complete", 16, {}),
    ("complete", 7, {}),
    ("two_hubs", 16, {}),
    ("two_hubs", 9, {}),
    ("star", 16, {}),
    ("star", 11, {}),
    ("torus", 16, {}),
    ("torus", 15, {}),
    ("erdos_renyi", 16, {}),
    ("erdos_renyi", 21, {}),
    ("random_regular", 16, {"degree": 3}),
    ("random_regular", 15, {"degree": 4}),
    ("watts_strogatz", 16, {}),
    ("watts_strogatz", 17, {}),
    ("exponential", 16, {}),
    ("exponential", 13, {}),
]
CASE_IDS = [f"{name}-{n}" for name, n, _ in GRAPH_CASES]
REGULAR = {"ring", "complete", "torus", "random_regular", "exponential"}
SYMMETRIC_RULES = ["metropolis_hastings", "max_degree", "laplacian"]


def _degrees(G: nx.Graph) -> dict[int, int]:
    return dict(G.degree)


# --------------------------------------------------------------------------- builders


@pytest.mark.parametrize(("name", "n", "params"), GRAPH_CASES, ids=CASE_IDS)
def test_builder_gives_connected_graph_on_0_to_n_minus_1(name, n, params):
    G = build_graph(name, n, **params)
    assert isinstance(G, nx.Graph) and not G.is_directed()
    assert sorted(G.nodes) == list(range(n))
    assert nx.is_connected(G)
    assert nx.number_of_selfloops(G) == 0


@pytest.mark.parametrize("n", [3, 8, 15, 16])
def test_ring_degrees(n):
    G = topo.ring(n)
    assert set(_degrees(G).values()) == {2}
    assert all(G.has_edge(i, (i + 1) % n) for i in range(n))


@pytest.mark.parametrize("n", [2, 7, 16])
def test_complete_degrees(n):
    G = topo.complete(n)
    assert set(_degrees(G).values()) == {n - 1}


@pytest.mark.parametrize("n", [3, 9, 16])
def test_two_hubs_is_complete_bipartite_2_by_n_minus_2(n):
    G = topo.two_hubs(n)
    deg = _degrees(G)
    assert deg[0] == deg[1] == n - 2
    assert all(deg[i] == 2 for i in range(2, n))
    assert not G.has_edge(0, 1)
    assert all(G.has_edge(h, i) for h in (0, 1) for i in range(2, n))
    assert G.number_of_edges() == 2 * (n - 2)


def test_star_centre_is_node_0():
    G = topo.star(16)
    deg = _degrees(G)
    assert deg[0] == 15
    assert all(deg[i] == 1 for i in range(1, 16))


@pytest.mark.parametrize(
    ("n", "rows", "shape"), [(16, None, (4, 4)), (12, None, (3, 4)), (15, 5, (5, 3))]
)
def test_torus_is_4_regular_with_wraparound(n, rows, shape):
    G = topo.torus(n, rows=rows)
    r, c = shape
    assert set(_degrees(G).values()) == {4}
    assert G.number_of_edges() == 2 * n
    assert G.has_edge(0, c - 1)  # wraps along a row
    assert G.has_edge(0, (r - 1) * c)  # wraps along a column
    assert G.has_edge(0, 1) and G.has_edge(0, c)


@pytest.mark.parametrize(("n", "rows"), [(17, None), (14, None), (8, None), (16, 5), (16, 2)])
def test_torus_rejects_sizes_it_cannot_build(n, rows):
    with pytest.raises(ValueError, match=rf"n={n}"):
        topo.torus(n, rows=rows)


def test_exponential_links_powers_of_two():
    n = 16
    G = topo.exponential(n)
    for i in range(n):
        for hop in (1, 2, 4, 8):
            assert G.has_edge(i, (i + hop) % n)
            assert G.has_edge(i, (i - hop) % n)
        assert not G.has_edge(i, (i + 3) % n)
    assert set(_degrees(G).values()) == {7}  # +-1, +-2, +-4, and +8 == -8


@pytest.mark.parametrize(("n", "degree"), [(16, 3), (15, 4), (10, 5)])
def test_random_regular_degree(n, degree):
    G = topo.random_regular(n, degree=degree, seed=3)
    assert set(_degrees(G).values()) == {degree}
    assert nx.is_connected(G)


def test_random_regular_rejects_odd_n_times_degree():
    with pytest.raises(ValueError, match="even"):
        topo.random_regular(15, degree=3)


def test_watts_strogatz_rejects_bad_k():
    with pytest.raises(ValueError, match="k=16"):
        topo.watts_strogatz(16, k=16)


def test_erdos_renyi_default_p_and_impossible_p():
    G = topo.erdos_renyi(1)
    assert G.number_of_nodes() == 1
    with pytest.raises(ValueError, match=r"p=0\.01"):
        topo.erdos_renyi(50, p=0.01)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("erdos_renyi", {}),
        ("random_regular", {"degree": 3}),
        ("watts_strogatz", {"p": 0.3}),
    ],
)
def test_seeded_builders_are_reproducible(name, params):
    a = build_graph(name, 20, seed=5, **params)
    b = build_graph(name, 20, seed=5, **params)
    assert sorted(a.edges) == sorted(b.edges)


def test_erdos_renyi_depends_on_seed():
    edge_sets = {frozenset(topo.erdos_renyi(20, seed=s).edges) for s in range(4)}
    assert len(edge_sets) > 1


def test_build_graph_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="hypercube") as err:
        build_graph("hypercube", 8)
    assert "ring" in str(err.value) and "torus" in str(err.value)
    with pytest.raises(ValueError, match="n=0"):
        build_graph("ring", 0)
    with pytest.raises(ValueError, match="n=2"):
        build_graph("ring", 2)
    with pytest.raises(ValueError, match="'p'"):
        build_graph("ring", 8, p=0.5)


def test_build_graph_accepts_every_registered_name():
    assert set(BUILDERS) >= {
        "ring",
        "complete",
        "two_hubs",
        "star",
        "torus",
        "erdos_renyi",
        "random_regular",
        "watts_strogatz",
        "exponential",
        "file",
    }
    assert build_graph("two-hubs", 5).number_of_edges() == 6


# --------------------------------------------------------------------------- mixing rules


@pytest.mark.parametrize("rule", SYMMETRIC_RULES)
@pytest.mark.parametrize(("name", "n", "params"), GRAPH_CASES, ids=CASE_IDS)
def test_symmetric_rules_validate_on_every_builder(name, n, params, rule):
    G = build_graph(name, n, **params)
    Pi = mixing_matrix(G, rule)
    assert Pi.shape == (n, n) and Pi.dtype == np.float64
    report = validate_mixing(Pi, G)
    assert report.ok and report.symmetric and report.doubly_stochastic
    assert 0.0 < report.spectral_gap <= 1.0 + 1e-12
    assert report.spectral_gap == pytest.approx(spectral_gap(Pi))


@pytest.mark.parametrize(
    ("name", "n", "params"),
    [case for case in GRAPH_CASES if case[0] in REGULAR],
    ids=[i for i, case in zip(CASE_IDS, GRAPH_CASES, strict=True) if case[0] in REGULAR],
)
def test_uniform_validates_on_regular_graphs(name, n, params):
    G = build_graph(name, n, **params)
    report = validate_mixing(mixing_matrix(G, "uniform"), G)
    assert 0.0 < report.spectral_gap <= 1.0 + 1e-12


def test_uniform_on_ring_is_one_third_on_closed_neighbourhood():
    n = 10
    Pi = mixing_matrix(topo.ring(n), "uniform")
    expected = np.zeros((n, n))
    for i in range(n):
        for j in (i - 1, i, i + 1):
            expected[i, j % n] = 1 / 3
    np.testing.assert_allclose(Pi, expected)
    # eigenvalues 1/3 + 2/3 cos(2 pi k / n): |lambda_2| = 1/3 + 2/3 cos(2 pi / n)
    assert spectral_gap(Pi) == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / n)))


def test_uniform_on_complete_graph_averages_in_one_step():
    Pi = mixing_matrix(topo.complete(8), "uniform")
    np.testing.assert_allclose(Pi, np.full((8, 8), 1 / 8))
    assert check_mixing(Pi).spectral_gap == pytest.approx(1.0)


def test_metropolis_hastings_values_on_two_hubs():
    n = 16
    Pi = mixing_matrix(topo.two_hubs(n), "metropolis_hastings")
    assert Pi[0, 2] == pytest.approx(1 / 15)  # 1 / (1 + max(14, 2))
    assert Pi[0, 1] == 0.0
    assert Pi[2, 3] == 0.0
    assert Pi[0, 0] == pytest.approx(1 - 14 / 15)
    assert Pi[2, 2] == pytest.approx(1 - 2 / 15)


def test_max_degree_values_on_star():
    Pi = mixing_matrix(topo.star(5), "max_degree")
    assert Pi[0, 3] == pytest.approx(1 / 5)
    assert Pi[0, 0] == pytest.approx(1 / 5)
    assert Pi[3, 3] == pytest.approx(4 / 5)


def test_laplacian_rule_eigenvalues_in_one_third_to_one():
    G = topo.two_hubs(10)
    Pi = mixing_matrix(G, "laplacian")
    eig = np.linalg.eigvalsh(Pi)
    assert eig.min() == pytest.approx(1 / 3)
    assert eig.max() == pytest.approx(1.0)
    L = nx.laplacian_matrix(G).toarray()
    np.testing.assert_allclose(Pi, np.eye(10) - 2 * L / (3 * np.linalg.eigvalsh(L).max()))


def test_edge_weights_rule_and_missing_weight():
    G = topo.ring(4)
    nx.set_edge_attributes(G, 0.25, "weight")
    Pi = mixing_matrix(G, "edge_weights")
    np.testing.assert_allclose(np.diag(Pi), 0.5)
    assert Pi[0, 1] == Pi[1, 0] == 0.25 and Pi[0, 2] == 0.0
    validate_mixing(Pi, G)
    del G.edges[2, 3]["weight"]
    with pytest.raises(ValueError, match=r"\(2,3\)"):
        mixing_matrix(G, "edge_weights")


def test_dimat_on_two_hubs_16_has_the_papers_weights_not_metropolis_hastings():
    n, a = 16, 0.06  # a = floor(100 / 15) / 100
    G = topo.two_hubs(n)
    Pi = mixing_matrix(G, "dimat")
    report = validate_mixing(Pi, G)
    assert report.symmetric and report.doubly_stochastic
    np.testing.assert_allclose(np.diag(Pi)[:2], 1 - (n - 2) * a)  # hubs keep 0.16
    assert Pi[0, 0] == pytest.approx(0.16)
    np.testing.assert_allclose(np.diag(Pi)[2:], 1 - 2 * a)  # the others keep 0.88
    np.testing.assert_allclose(Pi[:2, 2:], a)
    assert Pi[0, 1] == Pi[1, 0] == 0.0 and Pi[2, 3] == 0.0  # no hub-hub nor leaf-leaf weight
    assert report.spectral_gap == pytest.approx(0.12)  # 2a: |lambda_2| = 1 - 2a
    mh = check_mixing(mixing_matrix(G, "metropolis_hastings"), G)
    assert mh.spectral_gap == pytest.approx(2 / 15)  # 0.133: the rules differ
    assert mixing_matrix(G, "metropolis_hastings")[0, 0] == pytest.approx(1 / 15)
    G10 = topo.two_hubs(10)
    assert check_mixing(mixing_matrix(G10, "dimat"), G10).spectral_gap == pytest.approx(0.22)


def test_dimat_finds_the_hubs_where_dimat_numbers_them_last():
    n = 12
    last = nx.relabel_nodes(topo.two_hubs(n), {0: n - 2, 1: n - 1, n - 2: 0, n - 1: 1})
    Pi = mixing_matrix(last, "dimat")
    assert Pi[n - 1, n - 1] == pytest.approx(1 - (n - 2) * 0.09)
    assert Pi[0, 0] == pytest.approx(1 - 2 * 0.09) and Pi[n - 2, n - 1] == 0.0
    perm = [n - 2, n - 1, *range(2, n - 2), 0, 1]  # node order of two_hubs(n)
    np.testing.assert_allclose(Pi[np.ix_(perm, perm)], mixing_matrix(topo.two_hubs(n), "dimat"))


@pytest.mark.parametrize(("name", "n"), [("ring", 16), ("star", 9), ("complete", 6)])
def test_dimat_refuses_other_graphs_naming_rule_and_graph(name, n):
    with pytest.raises(ValueError, match=f"'dimat'.*two_hubs.*'{name}' graph of {n} nodes"):
        mixing_matrix(build_graph(name, n), "dimat")
    hub_link = topo.two_hubs(8)
    hub_link.add_edge(0, 1)
    with pytest.raises(ValueError, match="'dimat'"):
        mixing_matrix(hub_link, "dimat")
    with pytest.raises(ValueError, match="n=102 > 101"):
        mixing_matrix(topo.two_hubs(102), "dimat")


def test_topologies_command_marks_dimat_invalid_off_two_hubs(capsys):
    from decaf_ray.cli import main

    assert main(["topologies", "--n", "16"]) == 0
    rows = {
        line.split()[0]: line.split()[1:]
        for line in capsys.readouterr().out.splitlines()[2:]
        if line.strip() and not line.startswith("also")
    }
    header_rules = [r for r in MIXING_RULES if r != "edge_weights"]
    col = header_rules.index("dimat")
    assert rows["two_hubs"][col] == "0.1200"
    assert rows["ring"][col] == rows["star"][col] == "-"
    assert rows["ring"][header_rules.index("uniform")] == "0.0507"


def test_dimat_in_a_config_needs_the_two_hubs_graph():
    from decaf_ray.config import ConfigError, config_from_dict

    ok = config_from_dict({"topology": {"name": "two_hubs", "n": 16, "mixing": "dimat"}})
    assert ok.topology.mixing == "dimat"
    with pytest.raises(ConfigError, match="mixing='dimat'.*two_hubs only, not 'ring'"):
        config_from_dict({"topology": {"name": "ring", "mixing": "dimat"}})
    with pytest.raises(ConfigError, match="schedule.graph='matching'"):
        config_from_dict(
            {"topology": {"name": "two_hubs", "mixing": "dimat"}, "schedule": {"graph": "matching"}}
        )


def test_unknown_mixing_rule_names_the_rule():
    with pytest.raises(ValueError, match="sinkhorn") as err:
        mixing_matrix(topo.ring(4), "sinkhorn")
    assert all(rule in str(err.value) for rule in MIXING_RULES)


# --------------------------------------------------------------------------- checks


def _ring_mh(n: int = 5) -> tuple[nx.Graph, np.ndarray]:
    G = topo.ring(n)
    return G, mixing_matrix(G, "metropolis_hastings")


def test_rejects_non_symmetric():
    G, Pi = _ring_mh()
    Pi[0, 1], Pi[0, 0] = 0.5, 1 / 6  # row still sums to 1
    with pytest.raises(MixingError, match="not symmetric") as err:
        validate_mixing(Pi, G)
    assert "Pi[0,1]=0.5" in str(err.value) and "Pi[1,0]=0.333333" in str(err.value)
    report = check_mixing(Pi, G)
    assert not report.symmetric and not report.doubly_stochastic  # column 1 is off


def test_rejects_row_not_summing_to_one():
    G, Pi = _ring_mh()
    Pi[2, 2] -= 0.1
    with pytest.raises(MixingError, match="row 2 sums to 0.9, not 1"):
        validate_mixing(Pi, G)
    assert not check_mixing(Pi, G).doubly_stochastic


def test_rejects_negative_entry():
    G = topo.ring(4)
    Pi = np.array(
        [
            [1.2, -0.1, 0.0, -0.1],
            [-0.1, 1.2, -0.1, 0.0],
            [0.0, -0.1, 1.2, -0.1],
            [-0.1, 0.0, -0.1, 1.2],
        ]
    )
    report = check_mixing(Pi, G)
    assert report.symmetric and report.doubly_stochastic and not report.nonnegative
    with pytest.raises(MixingError, match=r"Pi\[0,1\]=-0.1 is negative"):
        validate_mixing(Pi, G)


def test_rejects_disconnected_graph():
    G = nx.disjoint_union(topo.ring(4), topo.ring(5))
    Pi = mixing_matrix(G, "metropolis_hastings")
    report = check_mixing(Pi, G)
    assert report.symmetric and report.doubly_stochastic and not report.connected
    with pytest.raises(MixingError, match=r"disconnected \(2 components\)"):
        validate_mixing(Pi, G)
    with pytest.raises(MixingError, match="disconnected"):
        validate_mixing(Pi)  # support graph of Pi alone
    with pytest.raises(MixingError, match="disconnected"):
        validate_mixing(np.eye(3))


def test_rejects_entry_off_the_graph():
    G, Pi = _ring_mh()
    Pi[1, 3] = Pi[3, 1] = 0.1
    Pi[1, 1] -= 0.1
    Pi[3, 3] -= 0.1
    report = check_mixing(Pi, G)
    assert report.symmetric and report.doubly_stochastic and not report.within_support
    with pytest.raises(MixingError, match=r"Pi\[1,3\]=0.1 but \(1,3\) is not an edge"):
        validate_mixing(Pi, G)
    assert check_mixing(Pi).ok  # without a graph there is no support constraint


def test_uniform_on_star_is_rejected_as_not_symmetric():
    G = topo.star(6)
    Pi = mixing_matrix(G, "uniform")
    np.testing.assert_allclose(Pi.sum(axis=1), 1.0)  # row stochastic ...
    with pytest.raises(MixingError, match="not symmetric"):  # ... but not symmetric
        validate_mixing(Pi, G)


def test_error_lists_all_problems():
    G, Pi = _ring_mh()
    Pi[0, 2] = 0.3  # off the graph, breaks symmetry and row 0
    message = str(pytest.raises(MixingError, validate_mixing, Pi, G).value)
    assert "not symmetric" in message
    assert "row 0 sums to" in message
    assert "(0,2) is not an edge" in message


@pytest.mark.parametrize(
    ("Pi", "text"),
    [
        (np.ones((3, 4)) / 4, "shape (3, 4)"),
        (np.ones(3) / 3, "shape (3,)"),
        (np.full((4, 4), np.nan), "NaN"),
    ],
)
def test_rejects_bad_shape_and_nan(Pi, text):
    report = check_mixing(Pi)
    assert not report.ok and math.isnan(report.spectral_gap)
    with pytest.raises(MixingError, match=re.escape(text)):
        validate_mixing(Pi)


def test_rejects_size_mismatch_with_graph():
    with pytest.raises(MixingError, match="4 x 4 but the graph has 5 nodes"):
        validate_mixing(np.full((4, 4), 0.25), topo.ring(5))


def test_rejects_periodic_matrix_with_zero_gap():
    Pi = np.array([[0.0, 1.0], [1.0, 0.0]])  # swaps forever, never averages
    report = check_mixing(Pi)
    assert report.lambda_2 == pytest.approx(1.0) and not report.ok
    assert "spectral gap is 0" in report.problems[0]


def test_report_is_frozen_and_ok_reflects_problems():
    G, Pi = _ring_mh()
    report = check_mixing(Pi, G)
    assert report.ok and report.problems == ()
    assert report.lambda_2 == pytest.approx(1 - report.spectral_gap)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.symmetric = False  # type: ignore[misc]
    assert issubclass(MixingError, ValueError)


# --------------------------------------------------------------------------- files


def test_from_file_edge_list_relabels_sorted(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("# comment\n10 20\n20 30\n\n30 10\n30 40\n")
    G = topo.from_file(path)
    assert sorted(G.nodes) == [0, 1, 2, 3]
    assert sorted(G.edges) == [(0, 1), (0, 2), (1, 2), (2, 3)]
    assert build_graph("file", 4, path=str(path)).number_of_edges() == 4
    assert build_graph("file", 0, path=str(path)).number_of_nodes() == 4


def test_from_file_weighted_csv_with_header(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("source,target,weight\n0,1,0.5\n1,2,0.5\n2,0,0.5\n")
    G = topo.from_file(path)
    assert G.edges[0, 1]["weight"] == 0.5
    Pi = mixing_matrix(G, "edge_weights")
    validate_mixing(Pi, G)
    np.testing.assert_allclose(np.diag(Pi), 0.0)  # 1 - 0.5 - 0.5


def test_from_file_graphml_plain_and_weighted(tmp_path):
    ring = nx.relabel_nodes(topo.ring(6), {i: f"{i + 1}" for i in range(6)})
    plain = tmp_path / "ring.graphml"
    nx.write_graphml(ring, plain)
    G = topo.from_file(plain)
    assert sorted(G.nodes) == list(range(6)) and set(_degrees(G).values()) == {2}

    weighted = topo.ring(6)
    nx.set_edge_attributes(weighted, 0.3, "weight")
    path = tmp_path / "weighted.graphml"
    nx.write_graphml(weighted, path)
    G = build_graph("file", 6, path=str(path))
    Pi = mixing_matrix(G, "edge_weights")
    assert Pi[0, 1] == pytest.approx(0.3) and Pi[0, 0] == pytest.approx(0.4)
    assert validate_mixing(Pi, G).ok


def test_from_file_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        topo.from_file(missing)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        build_graph("file", 0, path=str(missing))

    odd = tmp_path / "g.json"
    odd.write_text("{}")
    with pytest.raises(ValueError, match=r"\.json"):
        topo.from_file(odd)

    path = tmp_path / "g.edges"
    path.write_text("0 1\n1 2\n")
    with pytest.raises(ValueError, match=r"3 nodes.*n=5"):
        build_graph("file", 5, path=str(path))
    with pytest.raises(ValueError, match="path"):
        build_graph("file", 3)

    bad = tmp_path / "bad.txt"
    bad.write_text("0 1\n1 x\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        topo.from_file(bad)


# --------------------------------------------------------------------------- purity


def test_package_imports_no_heavy_dependencies():
    code = (
        "import sys, topologies; "
        "bad = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
