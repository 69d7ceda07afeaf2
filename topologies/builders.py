"""Communication graphs for decentralized training.

Every builder returns an undirected, connected ``networkx.Graph`` whose nodes are the
integers ``0..n-1`` (node ``i`` is client ``i``). Random builders are seeded, so the same
arguments always give the same graph.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np

_MAX_TRIES = 100
COMPLETE_MAX_N = 2048  # K_2048 already holds 2.1M networkx edges (16 s to build here)
FAST_GNP_ABOVE_N = 2048  # erdos_renyi above this: O(n + |E|) sampler, not O(n^2)
_EDGE_LIST_SUFFIXES = (".txt", ".edges", ".csv")


def _require_n(name: str, n: int, minimum: int) -> None:
    if n < minimum:
        raise ValueError(f"{name} needs n >= {minimum} nodes, got n={n}")


def ring(n: int) -> nx.Graph:
    """Cycle 0-1-...-(n-1)-0: every node has degree 2."""
    _require_n("ring", n, 3)
    return nx.cycle_graph(n)


def complete(n: int) -> nx.Graph:
    """Complete graph K_n: every node has degree n-1; at most COMPLETE_MAX_N (2,048) nodes.

    K_n has n (n - 1) / 2 edges and a dense mixing matrix (uniform: every weight 1/n), so it
    does not scale: K_4096 takes a minute and GBs as a networkx graph.
    """
    _require_n("complete", n, 1)
    if n > COMPLETE_MAX_N:
        raise ValueError(
            f"complete: n={n} > {COMPLETE_MAX_N} nodes would hold {n * (n - 1) // 2:,} edges "
            "and a dense n x n mixing matrix; for many nodes use a sparse graph with a large "
            "spectral gap (exponential, erdos_renyi, random_regular)"
        )
    return nx.complete_graph(n)


def two_hubs(n: int) -> nx.Graph:
    """The DeCAF paper's bipartite graph: complete bipartite K_{2, n-2}.

    Nodes 0 and 1 are hubs linked to every other node (degree n-2); nodes 2..n-1 are
    linked to both hubs only (degree 2). The hubs are not linked to each other.
    """
    _require_n("two_hubs", n, 3)
    return nx.complete_bipartite_graph(2, n - 2)  # nodes are already 0..n-1


def star(n: int) -> nx.Graph:
    """Star with centre 0 linked to leaves 1..n-1."""
    _require_n("star", n, 2)
    return nx.star_graph(n - 1)


def _torus_rows(n: int) -> int:
    """Largest divisor of n that is <= sqrt(n)."""
    return max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)


def _torus_sizes_near(n: int) -> list[int]:
    ok = [m for m in range(9, 2 * n + 10) if _torus_rows(m) >= 3]
    below = [m for m in ok if m < n][-1:]
    above = [m for m in ok if m > n][:1]
    return below + above


def torus(n: int, rows: int | None = None) -> nx.Graph:
    """2-D torus of rows x cols nodes (n = rows * cols, wrap-around edges), degree 4.

    Node (r, c) is labelled r * cols + c. ``rows`` defaults to the largest divisor of n
    that is <= sqrt(n). Both sides must be >= 3 (smaller sides collapse edges).
    """
    _require_n("torus", n, 9)
    if rows is None:
        rows = _torus_rows(n)
    if rows < 1 or n % rows != 0:
        raise ValueError(f"torus: rows={rows} does not divide n={n}")
    cols = n // rows
    if rows < 3 or cols < 3:
        raise ValueError(
            f"torus needs n = rows * cols with rows, cols >= 3; n={n} gives {rows} x {cols}"
            f" (sizes that work nearby: {_torus_sizes_near(n)})"
        )
    node = np.arange(n).reshape(rows, cols)  # node[r, c] = r * cols + c
    graph = nx.empty_graph(n)
    for neighbour in (np.roll(node, -1, axis=1), np.roll(node, -1, axis=0)):  # right, down
        graph.add_edges_from(zip(node.ravel().tolist(), neighbour.ravel().tolist()))
    return graph


def erdos_renyi(n: int, p: float | None = None, seed: int = 0) -> nx.Graph:
    """Connected G(n, p) graph; p defaults to min(1, 2 ln(n) / n).

    Samples with seed, seed+1, ... (up to 100 tries) until the graph is connected. Up to
    FAST_GNP_ABOVE_N (2,048) nodes with ``nx.gnp_random_graph`` (one coin per pair, O(n^2):
    the graphs every seed gave before), above with ``nx.fast_gnp_random_graph`` (geometric
    skips, O(n + |E|): the same distribution, other draws; 16,384 nodes in about 1 s).
    """
    _require_n("erdos_renyi", n, 1)
    if p is None:
        p = min(1.0, 2.0 * math.log(n) / n)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"erdos_renyi: p must be in [0, 1], got p={p}")
    sampler = nx.fast_gnp_random_graph if n > FAST_GNP_ABOVE_N else nx.gnp_random_graph
    graph = _first_connected(lambda s: sampler(n, p, seed=s), seed)
    if graph is not None:
        return graph
    raise ValueError(
        f"erdos_renyi: no connected graph with n={n}, p={p:.4g} in {_MAX_TRIES} tries "
        f"(seeds {seed}..{seed + _MAX_TRIES - 1}); use a larger p"
    )


def _first_connected(sample: Callable[[int], nx.Graph], seed: int) -> nx.Graph | None:
    """The first connected graph among sample(seed), sample(seed + 1), ... (_MAX_TRIES tries)."""
    for attempt in range(_MAX_TRIES):
        graph = sample(seed + attempt)
        if nx.is_connected(graph):
            return graph
    return None


def random_regular(n: int, degree: int = 3, seed: int = 0) -> nx.Graph:
    """Connected random d-regular graph (needs n * d even and d < n); resamples like erdos_renyi."""
    _require_n("random_regular", n, 2)
    if not 1 <= degree < n:
        raise ValueError(f"random_regular: need 1 <= degree < n, got degree={degree}, n={n}")
    if (n * degree) % 2 != 0:
        raise ValueError(f"random_regular: n * degree must be even, got n={n}, degree={degree}")
    graph = _first_connected(lambda s: nx.random_regular_graph(degree, n, seed=s), seed)
    if graph is not None:
        return graph
    raise ValueError(
        f"random_regular: no connected {degree}-regular graph on n={n} nodes in "
        f"{_MAX_TRIES} tries; use a larger degree"
    )


def watts_strogatz(n: int, k: int = 4, p: float = 0.1, seed: int = 0) -> nx.Graph:
    """Connected small-world graph: ring with k nearest neighbours, each edge rewired w.p. p."""
    _require_n("watts_strogatz", n, 3)
    if not 2 <= k < n:
        raise ValueError(f"watts_strogatz: need 2 <= k < n, got k={k}, n={n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"watts_strogatz: p must be in [0, 1], got p={p}")
    try:
        return nx.connected_watts_strogatz_graph(n, k, p, tries=_MAX_TRIES, seed=seed)
    except nx.NetworkXError as err:
        raise ValueError(f"watts_strogatz(n={n}, k={k}, p={p}): {err}") from err


def exponential(n: int) -> nx.Graph:
    """Exponential graph: node i is linked to (i +- 2^k) mod n for every k with 2^k < n."""
    _require_n("exponential", n, 1)
    graph = nx.empty_graph(n)
    hop = 1
    while hop < n:
        graph.add_edges_from((i, (i + hop) % n) for i in range(n))
        hop *= 2
    return graph


def _sort_key(node: object) -> tuple[int, int | str]:
    try:
        return (0, int(str(node)))
    except ValueError:
        return (1, str(node))


def _read_edge_list(path: Path) -> nx.Graph:
    """Lines ``u v`` or ``u,v`` (optional third column: weight); '#' starts a comment."""
    graph = nx.Graph()
    seen_data = False
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        fields = raw.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        try:
            u, v = int(fields[0]), int(fields[1])
            weight = float(fields[2]) if len(fields) > 2 else None
        except (ValueError, IndexError) as err:
            if not seen_data:  # header row such as "source,target,weight"
                seen_data = True
                continue
            raise ValueError(
                f"{path}:{lineno}: expected two integer node ids (and an optional weight), "
                f"got {raw.strip()!r}"
            ) from err
        seen_data = True
        if weight is None:
            graph.add_edge(u, v)
        else:
            graph.add_edge(u, v, weight=weight)
    return graph


def from_file(path: str | Path) -> nx.Graph:
    """Load a graph from an edge list (.txt/.edges/.csv) or a GraphML file (.graphml).

    Nodes are relabelled 0..n-1 in sorted order (numeric when the ids are integers);
    a ``weight`` edge attribute is kept as a float. Directions and self-loops are dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"topology file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in _EDGE_LIST_SUFFIXES:
        graph = _read_edge_list(path)
    elif suffix == ".graphml":
        graph = nx.Graph(nx.read_graphml(path))
    else:
        known = ", ".join((*_EDGE_LIST_SUFFIXES, ".graphml"))
        raise ValueError(f"unknown topology file extension {suffix!r} for {path}; use {known}")
    if graph.number_of_nodes() == 0:
        raise ValueError(f"topology file {path} contains no edges")

    graph.remove_edges_from(list(nx.selfloop_edges(graph)))
    mapping = {node: i for i, node in enumerate(sorted(graph.nodes, key=_sort_key))}
    out = nx.Graph()
    out.add_nodes_from(range(len(mapping)))
    for u, v, data in graph.edges(data=True):
        if "weight" in data:
            out.add_edge(mapping[u], mapping[v], weight=float(data["weight"]))
        else:
            out.add_edge(mapping[u], mapping[v])
    return out


BUILDERS: dict[str, Callable[..., nx.Graph]] = {
    "ring": ring,
    "complete": complete,
    "two_hubs": two_hubs,
    "star": star,
    "torus": torus,
    "erdos_renyi": erdos_renyi,
    "random_regular": random_regular,
    "watts_strogatz": watts_strogatz,
    "exponential": exponential,
    "file": from_file,
}


def build_graph(name: str, n: int, path: str | Path | None = None, **params) -> nx.Graph:
    """Build the topology ``name`` on n nodes, e.g. ``build_graph("torus", 16)``.

    ``name="file"`` loads ``path`` with :func:`from_file`; n is then ignored when n <= 0 and
    must match the file's node count otherwise. Extra ``params`` go to the builder.
    """
    key = name.strip().lower().replace("-", "_")
    if key not in BUILDERS:
        raise ValueError(f"unknown topology {name!r}; known topologies: {', '.join(BUILDERS)}")

    if key == "file":
        if path is None:
            raise ValueError("topology 'file' needs path=<edge list or .graphml file>")
        if params:
            raise ValueError(f"topology 'file' takes no parameters, got {sorted(params)}")
        graph = from_file(path)
        if n > 0 and graph.number_of_nodes() != n:
            raise ValueError(
                f"topology file {path} has {graph.number_of_nodes()} nodes but n={n} was requested"
            )
        return graph

    if path is not None:
        raise ValueError(f"path={path!r} is only used with topology 'file', not {name!r}")
    if n < 1:
        raise ValueError(f"topology {name!r} needs n >= 1 nodes, got n={n}")
    builder = BUILDERS[key]
    accepted = [p for p in inspect.signature(builder).parameters if p != "n"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"topology {name!r} does not take parameter(s) {unknown}; it accepts {accepted}"
        )
    graph = builder(n, **params)
    graph.graph["name"] = key  # what rules and checks call the graph in their messages
    return graph
