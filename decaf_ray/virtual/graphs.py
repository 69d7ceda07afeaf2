"""Time-varying graphs: a fresh communication graph per round, mixed by the chosen rule.

- ``erdos_renyi``: G(n, p) drawn anew each round (p defaults to 2 ln(n) / n; it may be
  disconnected in a given round: connectivity only has to hold over time).
- ``one_peer_exponential``: round t links i and (i + 2^k) mod n with k = (t - 1) mod
  floor(log2 n): every node talks to one or two peers, and log2(n) rounds cover the
  exponential graph.
- ``matching``: a uniformly random (near-)perfect matching; with n odd one node sits out.
The mixing matrix of each round is ``topologies.mixing_matrix(G_t, rule)``.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from topologies import mixing_matrix

DYNAMIC_GRAPHS = ("static", "erdos_renyi", "one_peer_exponential", "matching")


DENSE_DRAW_MAX = 4096  # G(n, p) from an n x n uniform draw up to here (the original stream)


def _gnp_edges(rng: np.random.Generator, n: int, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The edges (i < j) of one G(n, q) draw, as two index arrays.

    Up to ``DENSE_DRAW_MAX`` nodes each pair is kept where an (n, n) uniform draw is below q,
    the graphs runs have always had for a seed. Above it that table would be n^2 numbers
    (2 GiB at 16,384), so the edge count is drawn from Binomial(n (n - 1) / 2, q) and that many
    distinct pairs uniformly: the same distribution, O(edges) memory, another stream."""
    if n <= DENSE_DRAW_MAX:
        i, j = np.nonzero(np.triu(rng.random((n, n)) < q, k=1))
        return i, j
    pairs = n * (n - 1) // 2
    k = np.sort(rng.choice(pairs, size=int(rng.binomial(pairs, q)), replace=False))
    # pair index k -> (i, j) in row-major order of the strict upper triangle
    i = n - 2 - np.floor(np.sqrt(-8.0 * k + 4.0 * n * (n - 1) - 7) / 2.0 - 0.5).astype(np.int64)
    j = k + i + 1 - pairs + (n - i) * (n - i - 1) // 2
    return i, j


def graph_at(kind: str, n: int, round_idx: int, seed: int, p: float | None = None) -> nx.Graph:
    """The graph of round ``round_idx`` (1-based); depends only on (kind, n, round, seed, p)."""
    rng = np.random.default_rng([seed, round_idx])
    g = nx.empty_graph(n)
    if kind == "erdos_renyi":
        q = min(1.0, 2.0 * math.log(max(n, 2)) / n) if p is None else p
        g.add_edges_from(zip(*(x.tolist() for x in _gnp_edges(rng, n, q))))
    elif kind == "one_peer_exponential":
        levels = max(1, int(math.floor(math.log2(n)))) if n > 1 else 1
        hop = 2 ** ((round_idx - 1) % levels)
        g.add_edges_from((i, (i + hop) % n) for i in range(n) if (i + hop) % n != i)
    elif kind == "matching":
        order = rng.permutation(n)
        g.add_edges_from((int(order[k]), int(order[k + 1])) for k in range(0, n - 1, 2))
    else:
        raise ValueError(f"unknown dynamic graph {kind!r}; choose one of {DYNAMIC_GRAPHS}")
    return g


def mixing_at(kind: str, n: int, round_idx: int, rule: str, seed: int, p: float | None = None):
    """(n, n) mixing matrix of round ``round_idx`` under ``rule``."""
    return mixing_matrix(graph_at(kind, n, round_idx, seed, p), rule)
