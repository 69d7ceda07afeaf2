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


def graph_at(kind: str, n: int, round_idx: int, seed: int, p: float | None = None) -> nx.Graph:
    """The graph of round ``round_idx`` (1-based); depends only on (kind, n, round, seed, p)."""
    rng = np.random.default_rng([seed, round_idx])
    g = nx.empty_graph(n)
    if kind == "erdos_renyi":
        q = min(1.0, 2.0 * math.log(max(n, 2)) / n) if p is None else p
        upper = rng.random((n, n)) < q
        g.add_edges_from((i, j) for i in range(n) for j in range(i + 1, n) if upper[i, j])
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
