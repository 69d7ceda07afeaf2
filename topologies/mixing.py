"""Mixing (gossip) rules: graph G on nodes 0..n-1 -> n x n float64 matrix Pi.

One gossip step replaces each client's parameters x_i by sum_j Pi_ij x_j, so Pi_ij may be
non-zero only on the closed neighbourhood N[i] = {i} + neighbours(i). Degrees d_i ignore
self-loops. Use :func:`topologies.check.validate_mixing` to check the result.

Every rule takes ``sparse``: ``None`` (default) follows :func:`topologies.sparse.prefers_sparse`
(a ``scipy.sparse.csr_array`` above 2,048 nodes on a sparse graph, else a numpy array), True or
False forces the format. Both formats hold the same weights: the off-diagonal entries are the
same floats, the diagonal 1 - sum_{j != i} Pi_ij may differ in the last bit (summation order).
The weights are computed from the edge arrays (u, v) of G at once, O(n + |E|).
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from topologies.sparse import Matrix, prefers_sparse
from topologies.spectrum import banded_lu_is_cheap, extreme_eigenvalue, nonsingular_lu

_LAPLACIAN_TOL = 1e-12  # eigsh's relative tolerance on lambda_max(L) for a sparse laplacian rule


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


def _edge_arrays(G: nx.Graph) -> tuple[np.ndarray, np.ndarray]:
    """(u, v): int64 arrays of shape (|E|,), one entry per edge without self-loops."""
    uv = np.array(_edges(G), dtype=np.int64).reshape(-1, 2)
    return uv[:, 0], uv[:, 1]


def _degrees(G: nx.Graph) -> np.ndarray:
    n = _num_nodes(G)
    u, v = _edge_arrays(G)
    return np.bincount(np.concatenate([u, v]), minlength=n).astype(np.int64)


def _want_sparse(G: nx.Graph, sparse: bool | None) -> bool:
    if sparse is not None:
        return sparse
    n = G.number_of_nodes()
    return prefers_sparse(n, n + 2 * G.number_of_edges())


def _assemble(
    n: int,
    u: np.ndarray,
    v: np.ndarray,
    w_uv: np.ndarray,
    w_vu: np.ndarray,
    diagonal: np.ndarray | None,
    sparse: bool,
) -> Matrix:
    """Pi with Pi[u, v] = w_uv, Pi[v, u] = w_vu (arrays of shape (|E|,)) and Pi_ii = diagonal,
    or, when diagonal is None, Pi_ii = 1 - sum_{j != i} Pi_ij (every row sums to 1)."""
    if not sparse:
        pi = np.zeros((n, n))
        pi[u, v] = w_uv
        pi[v, u] = w_vu
        if diagonal is None:
            return _fill_diagonal(pi)
        np.fill_diagonal(pi, diagonal)
        return pi
    rows, cols = np.concatenate([u, v]), np.concatenate([v, u])
    off = sp.csr_array((np.concatenate([w_uv, w_vu]), (rows, cols)), shape=(n, n))
    if diagonal is None:
        diagonal = 1.0 - off.sum(axis=1)
    pi = (off + sp.diags_array(diagonal, format="csr")).tocsr()
    pi.sort_indices()
    return pi


def _fill_diagonal(pi: np.ndarray) -> np.ndarray:
    """Pi_ii = 1 - sum_{j != i} Pi_ij, so every row sums to 1."""
    np.fill_diagonal(pi, 0.0)
    np.fill_diagonal(pi, 1.0 - pi.sum(axis=1))
    return pi


def uniform(G: nx.Graph, sparse: bool | None = None) -> Matrix:
    """Pi_ij = 1 / (d_i + 1) for j in N[i] (the paper's 1/3 on a ring).

    Rows sum to 1, but Pi is symmetric (hence doubly stochastic) only on regular graphs;
    the paper uses it only there, and ``validate_mixing`` rejects it elsewhere (e.g. a star).
    """
    weight = 1.0 / (_degrees(G) + 1.0)
    u, v = _edge_arrays(G)
    return _assemble(len(weight), u, v, weight[u], weight[v], weight, _want_sparse(G, sparse))


def metropolis_hastings(G: nx.Graph, sparse: bool | None = None) -> Matrix:
    """Pi_ij = 1 / (1 + max(d_i, d_j)) on edges, Pi_ii = 1 - sum_{j != i} Pi_ij."""
    n = _num_nodes(G)
    deg = _degrees(G)
    u, v = _edge_arrays(G)
    w = 1.0 / (1.0 + np.maximum(deg[u], deg[v]))
    return _assemble(n, u, v, w, w, None, _want_sparse(G, sparse))


def max_degree(G: nx.Graph, sparse: bool | None = None) -> Matrix:
    """Pi_ij = 1 / (1 + d_max) on edges, Pi_ii = 1 - d_i / (1 + d_max)."""
    n = _num_nodes(G)
    deg = _degrees(G)
    d_max = int(deg.max()) if n else 0
    u, v = _edge_arrays(G)
    w = np.full(len(u), 1.0 / (1.0 + d_max))
    return _assemble(n, u, v, w, w, None, _want_sparse(G, sparse))


def _lambda_max(lap: Matrix) -> float:
    """Largest eigenvalue of the Laplacian L (n x n): dense eigvalsh; for a sparse L of small
    bandwidth (rings, tori: the top of the spectrum is clustered) shift-invert at the
    Gershgorin bound g = max_i 2 L_ii >= lambda_max, i.e. g - 1 / mu_top((g I - L)^-1), and
    eigsh on L itself otherwise; both to a relative 1e-12, a ValueError if ARPACK fails."""
    if not sp.issparse(lap):
        return float(np.linalg.eigvalsh(lap)[-1])
    n = lap.shape[0]
    try:
        if banded_lu_is_cheap(lap):
            g = 2.0 * float(lap.diagonal().max())
            lu = nonsingular_lu(g * sp.eye_array(n) - lap)
            if lu is None:  # g is an eigenvalue (a bipartite regular graph)
                return g
            op = sla.LinearOperator((n, n), matvec=lambda b: lu.solve(np.ravel(b)), dtype=float)
            return g - 1.0 / extreme_eigenvalue(op, tol=_LAPLACIAN_TOL)
        return extreme_eigenvalue(lap, tol=_LAPLACIAN_TOL)
    except sla.ArpackNoConvergence as err:
        raise ValueError(
            f"mixing rule 'laplacian' needs lambda_max(L) of this {n}-node graph and eigsh "
            "did not converge: use metropolis_hastings, or mixing_matrix(G, 'laplacian', "
            "sparse=False)"
        ) from err


def laplacian(G: nx.Graph, sparse: bool | None = None) -> Matrix:
    """Pi = I - 2 L / (3 lambda_max(L)), with L = D - A the graph Laplacian.

    Eigenvalues of Pi lie in [1/3, 1], so Pi is positive definite; Pi = I on an edgeless G.
    Sparse: lambda_max from eigsh to a relative 1e-12, so the weights match the dense rule's
    to about that.
    """
    n = _num_nodes(G)
    u, v = _edge_arrays(G)
    ones = np.ones(len(u))
    if _want_sparse(G, sparse):
        adj = sp.csr_array((np.concatenate([ones, ones]), (np.r_[u, v], np.r_[v, u])), (n, n))
        lap = (sp.diags_array(adj.sum(axis=1)) - adj).tocsr()
        eye = sp.eye_array(n, format="csr")
    else:
        adj = np.zeros((n, n))
        adj[u, v] = adj[v, u] = 1.0
        lap = np.diag(adj.sum(axis=1)) - adj
        eye = np.eye(n)
    lam_max = _lambda_max(lap) if n and len(u) else 0.0
    if lam_max <= 0.0:
        return eye
    pi = eye - 2.0 * lap / (3.0 * lam_max)
    return pi.tocsr() if sp.issparse(pi) else pi


def edge_weights(G: nx.Graph, sparse: bool | None = None) -> Matrix:
    """Pi_ij = Pi_ji = w_ij from the edge attribute ``weight``, Pi_ii = 1 - sum_{j != i} w_ij."""
    n = _num_nodes(G)
    u, v, w = [], [], []
    for a, b, weight in G.edges(data="weight"):
        if a == b:
            continue
        if weight is None:
            raise ValueError(
                f"edge ({a},{b}) has no 'weight' attribute; rule 'edge_weights' needs one per edge"
            )
        u.append(a)
        v.append(b)
        w.append(float(weight))
    u_arr, v_arr = np.array(u, dtype=np.int64), np.array(v, dtype=np.int64)
    w_arr = np.array(w, dtype=np.float64)
    return _assemble(n, u_arr, v_arr, w_arr, w_arr, None, _want_sparse(G, sparse))


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


def dimat(G: nx.Graph, sparse: bool | None = None) -> Matrix:
    """The DeCAF authors' weights on the two-hubs graph (from their earlier DIMAT code).

    With a = floor(100 / (n - 1)) / 100: Pi_hj = Pi_jh = a between a hub h and any other node
    j, Pi_jj = 1 - 2a, Pi_hh = 1 - (n - 2) a, and no weight between the hubs (n = 16: a = 0.06,
    hub self-weight 0.16, spectral gap 0.12). DIMAT numbers the hubs last; here they are found
    wherever they are (``two_hubs`` puts them first), which only permutes Pi. Defined on the
    two-hubs graph K_{2, n-2} alone, and for n <= 101 (beyond, a rounds down to 0), hence
    dense unless ``sparse=True``.
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
    pi = _fill_diagonal(pi)
    return sp.csr_array(pi) if sparse else pi


MIXING_RULES: dict[str, Callable[..., Matrix]] = {
    "uniform": uniform,
    "metropolis_hastings": metropolis_hastings,
    "max_degree": max_degree,
    "laplacian": laplacian,
    "edge_weights": edge_weights,
    "dimat": dimat,  # the two_hubs graph only
}


def mixing_matrix(G: nx.Graph, rule: str, sparse: bool | None = None) -> Matrix:
    """Pi for G under the named rule, e.g. ``mixing_matrix(G, "metropolis_hastings")``.

    ``sparse``: None picks the format by :func:`topologies.sparse.prefers_sparse` (n > 2,048
    and a sparse graph: csr_array), True or False forces it.
    """
    key = rule.strip().lower().replace("-", "_")
    if key not in MIXING_RULES:
        raise ValueError(f"unknown mixing rule {rule!r}; known rules: {', '.join(MIXING_RULES)}")
    return MIXING_RULES[key](G, sparse=sparse)
