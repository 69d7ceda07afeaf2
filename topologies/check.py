"""Checks that a mixing matrix Pi is a valid gossip matrix for a graph G.

Gossip x <- Pi x reaches the exact average (x_1 + ... + x_n) / n when Pi is symmetric,
doubly stochastic (rows and columns sum to 1), non-negative, supported on the edges of a
connected graph, and |lambda_2| < 1. The error shrinks like |lambda_2|^t, where
|lambda_2| is the second-largest eigenvalue modulus; the spectral gap is 1 - |lambda_2|.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from topologies.sparse import Matrix, as_csr, as_dense, is_sparse
from topologies.spectrum import DENSE_EIG_MAX_N, second_modulus


class MixingError(ValueError):
    """Raised by :func:`validate_mixing` when Pi is not a valid gossip matrix."""


@dataclass(frozen=True)
class MixingReport:
    """Outcome of :func:`check_mixing`; ``problems`` holds one sentence per failed check."""

    symmetric: bool
    doubly_stochastic: bool
    nonnegative: bool
    within_support: bool
    connected: bool
    spectral_gap: float  # 1 - |lambda_2|
    lambda_2: float  # second-largest eigenvalue modulus |lambda_2|
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _more(count: int, what: str) -> str:
    return f" (and {count} more {what})" if count > 0 else ""


def _is_gossip(Pi: sp.csr_array, atol: float) -> bool:
    """Non-negative with unit row sums (what the sparse eigen-solvers rely on)."""
    return bool(np.all(Pi.data >= -atol) and np.all(np.abs(Pi.sum(axis=1) - 1.0) <= atol))


def spectral_gap(Pi: Matrix) -> float:
    """Spectral gap 1 - |lambda_2| of a square mixing matrix (1 means one-step averaging).

    Pi may be a numpy array or a scipy.sparse matrix; above 2,048 nodes the gap comes from a
    sparse eigen-solver (:mod:`topologies.spectrum`: relative accuracy about 1e-10).
    """
    if not is_sparse(Pi):
        Pi = np.asarray(Pi, dtype=np.float64)
    if Pi.ndim != 2 or Pi.shape[0] != Pi.shape[1]:
        raise ValueError(f"Pi has shape {Pi.shape}; expected a square n x n matrix")
    if Pi.shape[0] <= DENSE_EIG_MAX_N:
        dense = as_dense(Pi)
        return 1.0 - second_modulus(dense, np.allclose(dense, dense.T, rtol=0.0, atol=1e-12), False)
    csr = as_csr(Pi)
    symmetric = len(_asymmetric(csr, 1e-12)[0]) == 0
    return 1.0 - second_modulus(csr, symmetric, symmetric and _is_gossip(csr, 1e-9))


def _entries(Pi: sp.csr_array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of the stored entries of a canonical csr_array, in row-major
    order (the order np.argwhere lists a dense matrix's entries in)."""
    rows = np.repeat(np.arange(Pi.shape[0]), np.diff(Pi.indptr))
    return rows, Pi.indices.astype(np.int64), Pi.data


def _shape_problem(Pi: Matrix, G: nx.Graph | None) -> str | None:
    if len(Pi.shape) != 2 or Pi.shape[0] != Pi.shape[1] or Pi.shape[0] == 0:
        return f"Pi has shape {Pi.shape}; expected a square n x n matrix with n >= 1"
    n = Pi.shape[0]
    if G is not None and G.number_of_nodes() != n:
        return f"Pi is {n} x {n} but the graph has {G.number_of_nodes()} nodes"
    if G is not None and set(G.nodes) != set(range(n)):
        return "the graph's nodes must be labelled 0..n-1 to match the rows of Pi"
    return None


def _finite_problem(Pi: sp.csr_array) -> str | None:
    rows, cols, values = _entries(Pi)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad) == 0:
        return None
    k = bad[0]
    return f"Pi contains NaN or inf values, e.g. Pi[{rows[k]},{cols[k]}]={values[k]}"


def _asymmetric(Pi: sp.csr_array, atol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, |Pi_ij - Pi_ji|) of the pairs i <= j whose difference exceeds atol."""
    rows, cols, diff = _entries(as_csr(sp.triu(abs(Pi - Pi.T))))
    bad = diff > atol
    return rows[bad], cols[bad], diff[bad]


def _symmetry_problems(Pi: sp.csr_array, atol: float) -> list[str]:
    rows, cols, diff = _asymmetric(Pi, atol)
    if len(diff) == 0:
        return []
    k = int(np.argmax(diff))  # the first largest, in row-major order
    i, j = rows[k], cols[k]
    return [
        f"Pi is not symmetric: Pi[{i},{j}]={_fmt(Pi[i, j])} but Pi[{j},{i}]={_fmt(Pi[j, i])}"
        f"{_more(len(diff) - 1, 'pairs')}; use a symmetric rule such as metropolis_hastings"
    ]


def _sum_problems(sums: np.ndarray, what: str, atol: float) -> list[str]:
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if len(bad) == 0:
        return []
    i = bad[0]
    return [f"{what} {i} sums to {_fmt(sums[i])}, not 1{_more(len(bad) - 1, what + 's')}"]


def _sign_problems(Pi: sp.csr_array, atol: float) -> list[str]:
    rows, cols, values = _entries(Pi)
    bad = values < -atol
    if not bad.any():
        return []
    k = int(np.argmin(values))
    return [
        f"Pi[{rows[k]},{cols[k]}]={_fmt(values[k])} is negative"
        f"{_more(int(bad.sum()) - 1, 'entries')}; mixing weights must be >= 0"
    ]


def _support_problems(Pi: sp.csr_array, G: nx.Graph, atol: float) -> list[str]:
    n = Pi.shape[0]
    edges = np.array([(u, v) for u, v in G.edges], dtype=np.int64).reshape(-1, 2)
    node = np.arange(n, dtype=np.int64)
    allowed = np.concatenate([edges[:, 0] * n + edges[:, 1], edges[:, 1] * n + edges[:, 0]])
    allowed = np.concatenate([allowed, node * n + node])  # the diagonal
    rows, cols, values = _entries(Pi)
    bad = np.flatnonzero((np.abs(values) > atol) & ~np.isin(rows * n + cols, allowed))
    if len(bad) == 0:
        return []
    k = bad[0]
    i, j = rows[k], cols[k]
    return [
        f"Pi[{i},{j}]={_fmt(values[k])} but ({i},{j}) is not an edge of the graph"
        f"{_more(len(bad) - 1, 'entries')}"
    ]


def _support_components(Pi: sp.csr_array, atol: float) -> int:
    """Connected components of the undirected graph with an edge i-j wherever Pi_ij or Pi_ji
    is non-zero (i != j)."""
    rows, cols, values = _entries(Pi)
    keep = (np.abs(values) > atol) & (rows != cols)
    n = Pi.shape[0]
    mask = sp.csr_array((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n))
    return int(connected_components(mask, directed=False)[0])


def _connectivity_problems(Pi: sp.csr_array, G: nx.Graph | None, atol: float) -> list[str]:
    consequence = "gossip cannot reach consensus"
    if G is not None and not nx.is_connected(G):
        k = nx.number_connected_components(G)
        return [f"the graph is disconnected ({k} components): {consequence}"]
    k = _support_components(Pi, atol)
    if k > 1:
        return [f"the support graph of Pi is disconnected ({k} components): {consequence}"]
    return []


def check_mixing(Pi: Matrix, G: nx.Graph | None = None, atol: float = 1e-9) -> MixingReport:
    """Check Pi (n x n) against every gossip requirement; never raises on a bad Pi.

    When G is given, Pi_ij may be non-zero only for edges (i, j) of G and on the diagonal;
    connectivity is that of the support graph of Pi (and of G when given). Pi may be a numpy
    array or a scipy.sparse matrix: every check but the dense eigen-solve of n <= 2,048 runs
    on its stored entries, O(nnz), and never forms an n x n array (connectivity by
    scipy.sparse.csgraph, |lambda_2| as :mod:`topologies.spectrum` says).
    """
    if not is_sparse(Pi):
        Pi = np.asarray(Pi, dtype=np.float64)
    nan = float("nan")
    shape_problem = _shape_problem(Pi, G)
    if shape_problem is not None:
        return MixingReport(False, False, False, False, False, nan, nan, (shape_problem,))
    csr = as_csr(Pi)
    finite_problem = _finite_problem(csr)
    if finite_problem is not None:
        return MixingReport(False, False, False, False, False, nan, nan, (finite_problem,))

    sym = _symmetry_problems(csr, atol)
    rows = _sum_problems(csr.sum(axis=1), "row", atol)
    cols = _sum_problems(csr.sum(axis=0), "column", atol) if sym else []
    sign = _sign_problems(csr, atol)
    off_graph = _support_problems(csr, G, atol) if G is not None else []
    disconnected = _connectivity_problems(csr, G, atol)
    problems = sym + rows + cols + sign + off_graph + disconnected

    gossip = not (sym or rows or sign)
    lam2 = second_modulus(Pi if not is_sparse(Pi) else csr, symmetric=not sym, gossip=gossip)
    gap = 1.0 - lam2
    if np.isnan(lam2) and not problems:
        problems.append(
            f"the spectral gap of this {csr.shape[0]}-node Pi could not be computed (the "
            "sparse eigen-solver did not converge); check it with topologies.spectral_gap"
        )
    elif not problems and gap <= atol:
        problems.append(
            f"|lambda_2|={_fmt(lam2)}, so the spectral gap is 0 and gossip will not converge; "
            "give every node a positive self-weight Pi[i,i]"
        )
    return MixingReport(
        symmetric=not sym,
        doubly_stochastic=not rows and not cols,
        nonnegative=not sign,
        within_support=not off_graph,
        connected=not disconnected,
        spectral_gap=gap,
        lambda_2=lam2,
        problems=tuple(problems),
    )


def validate_mixing(Pi: Matrix, G: nx.Graph | None = None, atol: float = 1e-9) -> MixingReport:
    """Like :func:`check_mixing`, but raise :class:`MixingError` listing all problems."""
    report = check_mixing(Pi, G, atol=atol)
    if not report.ok:
        lines = "\n".join(f"  - {p}" for p in report.problems)
        raise MixingError(f"invalid mixing matrix:\n{lines}")
    return report
