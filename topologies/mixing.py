"""Mixing (gossip) rules: graph G on nodes 0..n-1 -> n x n float64 matrix Pi.

One gossip step replaces each client's parameters x_i by sum_j Pi_ij x_j, so Pi_ij may be
non-zero only on the closed neighbourhood N[i] = {i} + neighbours(i). Degrees d_i ignore
self-loops. Use :func:`topologies.check.validate_mixing` to check the result.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np


def _num_nodes(G: nx.Graph) -> int:
    n = G.number_of_nodes()
    if set(G.nodes) != set(range(n)):
        raise ValueError(
            "mixing rules need nodes labelled 0..n-1; "
            "relabel with networkx.convert_node_labels_to_integers(G)"
        )
    return n


def _edges(G: nx.Graph) -> list[tuple[int, int]]:
    return [(u, v) for u, v in G.edges if u != v]


def _degrees(G: nx.Graph) -> np.ndarray:
    n = _num_nodes(G)
    deg = np.zeros(n, dtype=np.int64)
    for u, v in _edges(G):
        deg[u] += 1
        deg[v] += 1
    return deg


def _fill_diagonal(pi: np.ndarray) -> np.ndarray:
    """Pi_ii = 1 - sum_{j != i} Pi_ij, so every row sums to 1."""
    np.fill_diagonal(pi, 0.0)
    np.fill_diagonal(pi, 1.0 - pi.sum(axis=1))
    return pi


def uniform(G: nx.Graph) -> np.ndarray:
    """Pi_ij = 1 / (d_i + 1) for j in N[i] (the paper's 1/3 on a ring).

    Rows sum to 1, but Pi is symmetric (hence doubly stochastic) only on regular graphs;
    the paper uses it only there, and ``validate_mixing`` rejects it elsewhere (e.g. a star).
    """
    weight = 1.0 / (_degrees(G) + 1.0)
    pi = np.diag(weight)
    for u, v in _edges(G):
        pi[u, v] = weight[u]
        pi[v, u] = weight[v]
    return pi


def metropolis_hastings(G: nx.Graph) -> np.ndarray:
    """Pi_ij = 1 / (1 + max(d_i, d_j)) on edges, Pi_ii = 1 - sum_{j != i} Pi_ij."""
    n = _num_nodes(G)
    deg = _degrees(G)
    pi = np.zeros((n, n))
    for u, v in _edges(G):
        pi[u, v] = pi[v, u] = 1.0 / (1.0 + max(deg[u], deg[v]))
    return _fill_diagonal(pi)


def max_degree(G: nx.Graph) -> np.ndarray:
    """Pi_ij = 1 / (1 + d_max) on edges, Pi_ii = 1 - d_i / (1 + d_max)."""
    n = _num_nodes(G)
    deg = _degrees(G)
    d_max = int(deg.max()) if n else 0
    pi = np.zeros((n, n))
    for u, v in _edges(G):
        pi[u, v] = pi[v, u] = 1.0 / (1.0 + d_max)
    return _fill_diagonal(pi)


def laplacian(G: nx.Graph) -> np.ndarray:
    """Pi = I - 2 L / (3 lambda_max(L)), with L = D - A the graph Laplacian.

    Eigenvalues of Pi lie in [1/3, 1], so Pi is positive definite; Pi = I on an edgeless G.
    """
    n = _num_nodes(G)
    adj = np.zeros((n, n))
    for u, v in _edges(G):
        adj[u, v] = adj[v, u] = 1.0
    lap = np.diag(adj.sum(axis=1)) - adj
    lam_max = float(np.linalg.eigvalsh(lap)[-1]) if n else 0.0
    if lam_max <= 0.0:
        return np.eye(n)
    return np.eye(n) - 2.0 * lap / (3.0 * lam_max)


def edge_weights(G: nx.Graph) -> np.ndarray:
    """Pi_ij = Pi_ji = w_ij from the edge attribute ``weight``, Pi_ii = 1 - sum_{j != i} w_ij."""
    n = _num_nodes(G)
    pi = np.zeros((n, n))
    for u, v, data in G.edges(data=True):
        if u == v:
            continue
        if "weight" not in data:
            raise ValueError(
                f"edge ({u},{v}) has no 'weight' attribute; rule 'edge_weights' needs one per edge"
            )
        pi[u, v] = pi[v, u] = float(data["weight"])
    return _fill_diagonal(pi)


def _hub_pair(G: nx.Graph) -> tuple[int, int] | None:
    """The two hubs of G when G is K_{2, n-2} (two unlinked nodes, each linked to every other
    node, and no other edge), else None. On n = 4 (a 4-cycle) either opposite pair serves."""
    n = G.number_of_nodes()
    edges = {frozenset(e) for e in _edges(G)}
    if n < 3 or len(edges) != 2 * (n - 2):
        return None
    degree = _degrees(G)
    candidates = [int(i) for i in np.flatnonzero(degree == n - 2)]
    for k, h0 in enumerate(candidates):
        for h1 in candidates[k + 1 :]:
            others = [j for j in range(n) if j not in (h0, h1)]
            if edges == {frozenset((h, j)) for h in (h0, h1) for j in others}:
                return h0, h1
    return None


def dimat(G: nx.Graph) -> np.ndarray:
    """The DeCAF authors' weights on the two-hubs graph (from their earlier DIMAT code).

    With a = floor(100 / (n - 1)) / 100: Pi_hj = Pi_jh = a between a hub h and any other node
    j, Pi_jj = 1 - 2a, Pi_hh = 1 - (n - 2) a, and no weight between the hubs (n = 16: a = 0.06,
    hub self-weight 0.16, spectral gap 0.12). DIMAT numbers the hubs last; here they are found
    wherever they are (``two_hubs`` puts them first), which only permutes Pi. Defined on the
    two-hubs graph K_{2, n-2} alone, and for n <= 101 (beyond, a rounds down to 0).
    """
    n = _num_nodes(G)
    hubs = _hub_pair(G)
    if hubs is None:
        name = G.graph.get("name")
        which = f"the {name!r} graph" if name else "this graph"
        raise ValueError(
            f"mixing rule 'dimat' is defined on the two_hubs graph only (two unlinked hubs, each "
            f"linked to every other node, no other edge), not on {which} of {n} nodes and "
            f"{len(_edges(G))} edges: use topology.name=two_hubs or a rule such as "
            "metropolis_hastings"
        )
    a = (100 // (n - 1)) / 100
    if a == 0.0:
        raise ValueError(
            f"mixing rule 'dimat' gives each hub link a = floor(100 / (n - 1)) / 100 = 0 for "
            f"n={n} > 101 nodes, so nothing would mix: use metropolis_hastings"
        )
    pi = np.zeros((n, n))
    for h in hubs:
        for j in range(n):
            if j not in hubs:
                pi[h, j] = pi[j, h] = a
    return _fill_diagonal(pi)


MIXING_RULES: dict[str, Callable[[nx.Graph], np.ndarray]] = {
    "uniform": uniform,
    "metropolis_hastings": metropolis_hastings,
    "max_degree": max_degree,
    "laplacian": laplacian,
    "edge_weights": edge_weights,
    "dimat": dimat,  # the two_hubs graph only
}


def mixing_matrix(G: nx.Graph, rule: str) -> np.ndarray:
    """Pi for G under the named rule, e.g. ``mixing_matrix(G, "metropolis_hastings")``."""
    key = rule.strip().lower().replace("-", "_")
    if key not in MIXING_RULES:
        raise ValueError(f"unknown mixing rule {rule!r}; known rules: {', '.join(MIXING_RULES)}")
    return MIXING_RULES[key](G)
