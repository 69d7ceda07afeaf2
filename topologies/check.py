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


def _second_modulus(Pi: np.ndarray, symmetric: bool) -> float:
    """|lambda_2|: second-largest eigenvalue modulus of Pi (0 for a 1 x 1 matrix)."""
    if Pi.shape[0] < 2:
        return 0.0
    eig = np.linalg.eigvalsh((Pi + Pi.T) / 2) if symmetric else np.linalg.eigvals(Pi)
    return float(np.sort(np.abs(eig))[-2])


def spectral_gap(Pi: np.ndarray) -> float:
    """Spectral gap 1 - |lambda_2| of a square mixing matrix (1 means one-step averaging)."""
    Pi = np.asarray(Pi, dtype=np.float64)
    if Pi.ndim != 2 or Pi.shape[0] != Pi.shape[1]:
        raise ValueError(f"Pi has shape {Pi.shape}; expected a square n x n matrix")
    return 1.0 - _second_modulus(Pi, symmetric=np.allclose(Pi, Pi.T, rtol=0.0, atol=1e-12))


def _shape_problem(Pi: np.ndarray, G: nx.Graph | None) -> str | None:
    if Pi.ndim != 2 or Pi.shape[0] != Pi.shape[1] or Pi.shape[0] == 0:
        return f"Pi has shape {Pi.shape}; expected a square n x n matrix with n >= 1"
    n = Pi.shape[0]
    if G is not None and G.number_of_nodes() != n:
        return f"Pi is {n} x {n} but the graph has {G.number_of_nodes()} nodes"
    if G is not None and set(G.nodes) != set(range(n)):
        return "the graph's nodes must be labelled 0..n-1 to match the rows of Pi"
    if not np.all(np.isfinite(Pi)):
        i, j = np.argwhere(~np.isfinite(Pi))[0]
        return f"Pi contains NaN or inf values, e.g. Pi[{i},{j}]={Pi[i, j]}"
    return None


def _symmetry_problems(Pi: np.ndarray, atol: float) -> list[str]:
    diff = np.triu(np.abs(Pi - Pi.T))
    bad = np.argwhere(diff > atol)
    if len(bad) == 0:
        return []
    i, j = np.unravel_index(np.argmax(diff), diff.shape)
    return [
        f"Pi is not symmetric: Pi[{i},{j}]={_fmt(Pi[i, j])} but Pi[{j},{i}]={_fmt(Pi[j, i])}"
        f"{_more(len(bad) - 1, 'pairs')}; use a symmetric rule such as metropolis_hastings"
    ]


def _sum_problems(sums: np.ndarray, what: str, atol: float) -> list[str]:
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if len(bad) == 0:
        return []
    i = bad[0]
    return [f"{what} {i} sums to {_fmt(sums[i])}, not 1{_more(len(bad) - 1, what + 's')}"]


def _sign_problems(Pi: np.ndarray, atol: float) -> list[str]:
    bad = np.argwhere(Pi < -atol)
    if len(bad) == 0:
        return []
    i, j = np.unravel_index(np.argmin(Pi), Pi.shape)
    return [
        f"Pi[{i},{j}]={_fmt(Pi[i, j])} is negative{_more(len(bad) - 1, 'entries')}; "
        "mixing weights must be >= 0"
    ]


def _support_problems(Pi: np.ndarray, G: nx.Graph, atol: float) -> list[str]:
    allowed = np.eye(Pi.shape[0], dtype=bool)
    for u, v in G.edges:
        allowed[u, v] = allowed[v, u] = True
    bad = np.argwhere((np.abs(Pi) > atol) & ~allowed)
    if len(bad) == 0:
        return []
    i, j = bad[0]
    return [
        f"Pi[{i},{j}]={_fmt(Pi[i, j])} but ({i},{j}) is not an edge of the graph"
        f"{_more(len(bad) - 1, 'entries')}"
    ]


def _support_graph(Pi: np.ndarray, atol: float) -> nx.Graph:
    """Undirected graph with an edge i-j wherever Pi_ij or Pi_ji is non-zero (i != j)."""
    support = nx.empty_graph(Pi.shape[0])
    mask = np.abs(Pi) > atol
    np.fill_diagonal(mask, False)
    support.add_edges_from(map(tuple, np.argwhere(mask | mask.T)))
    return support


def _connectivity_problems(support: nx.Graph, G: nx.Graph | None) -> list[str]:
    consequence = "gossip cannot reach consensus"
    if G is not None and not nx.is_connected(G):
        k = nx.number_connected_components(G)
        return [f"the graph is disconnected ({k} components): {consequence}"]
    if not nx.is_connected(support):
        k = nx.number_connected_components(support)
        return [f"the support graph of Pi is disconnected ({k} components): {consequence}"]
    return []


def check_mixing(Pi: np.ndarray, G: nx.Graph | None = None, atol: float = 1e-9) -> MixingReport:
    """Check Pi (n x n) against every gossip requirement; never raises on a bad Pi.

    When G is given, Pi_ij may be non-zero only for edges (i, j) of G and on the diagonal;
    connectivity is that of the support graph of Pi (and of G when given).
    """
    Pi = np.asarray(Pi, dtype=np.float64)
    shape_problem = _shape_problem(Pi, G)
    if shape_problem is not None:
        nan = float("nan")
        return MixingReport(False, False, False, False, False, nan, nan, (shape_problem,))

    sym = _symmetry_problems(Pi, atol)
    rows = _sum_problems(Pi.sum(axis=1), "row", atol)
    cols = _sum_problems(Pi.sum(axis=0), "column", atol) if sym else []
    sign = _sign_problems(Pi, atol)
    off_graph = _support_problems(Pi, G, atol) if G is not None else []
    disconnected = _connectivity_problems(_support_graph(Pi, atol), G)
    problems = sym + rows + cols + sign + off_graph + disconnected

    lam2 = _second_modulus(Pi, symmetric=not sym)
    gap = 1.0 - lam2
    if not problems and gap <= atol:
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


def validate_mixing(Pi: np.ndarray, G: nx.Graph | None = None, atol: float = 1e-9) -> MixingReport:
    """Like :func:`check_mixing`, but raise :class:`MixingError` listing all problems."""
    report = check_mixing(Pi, G, atol=atol)
    if not report.ok:
        lines = "\n".join(f"  - {p}" for p in report.problems)
        raise MixingError(f"invalid mixing matrix:\n{lines}")
    return report
