"""Shards that may overlap: every node draws its own K samples from the training pool.

A disjoint partition (:func:`decaf_ray.data.partition`) cannot give more nodes than samples:
BBC News has 2,225 articles, while gossip-learning studies simulate thousands of nodes with a
few samples each. With ``data.samples_per_node: K`` every node i draws K samples by the
partition rule from the whole pool, with its own generator (seed, i), *independently of the
other nodes*: the same sample may sit on several nodes (sampling with replacement across
nodes; without replacement within a node, so a node's K rows are distinct whenever its
classes hold enough of them). Node i's shard depends only on (seed, i), not on n: a run with
more nodes keeps the shards of the first ones.

- ``iid``: K rows drawn uniformly from the pool.
- ``dirichlet``: label skew, q_i ~ Dir(alpha 1_C) over the C classes of the pool, class counts
  ~ Multinomial(K, q_i), then that many rows of each class (per node, the same skew as the
  disjoint rule's per-class proportions give on average).
- ``classes``: the disjoint rule's round-robin holders over a seeded class permutation; the
  node's K rows split as evenly as possible over its ``classes_per_node`` classes.

:func:`shard_overlap` measures how much the shards share (logged at round 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from decaf_ray.data.sources import DataError

__all__ = ["OVERLAP_SCHEMES", "ShardOverlap", "draw_shards", "shard_overlap"]

OVERLAP_SCHEMES: tuple[str, ...] = ("classes", "dirichlet", "iid")
_STREAM = 13  # the generator of node i is default_rng([seed, _STREAM, i])


@dataclass(frozen=True)
class ShardOverlap:
    """How much n shards share. ``overlap``: mean over nodes of the fraction of a node's
    distinct rows that at least one other node holds too (0: disjoint). ``copies``: mean
    number of nodes holding a row that some node holds, sum_i |S_i| / |S_1 u ... u S_n|.
    ``coverage``: the fraction of the pool held by some node."""

    overlap: float
    copies: float
    coverage: float


def _take(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``rows``: distinct when there are enough, else all of them and repeats."""
    return rng.choice(rows, size=k, replace=k > len(rows))


def _node_rows(
    by_class: list[np.ndarray], counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``counts[c]`` rows of class ``c`` for each class, (sum(counts),) int64."""
    parts = [_take(rows, int(k), rng) for rows, k in zip(by_class, counts, strict=True) if k]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def draw_shards(
    labels: np.ndarray,
    n_nodes: int,
    scheme: str,
    samples_per_node: int,
    *,
    alpha: float = 0.5,
    classes_per_node: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Each of ``n_nodes`` draws ``samples_per_node`` indices into ``labels`` by ``scheme``;
    one sorted int64 array per node, (samples_per_node,) each. Shards may overlap."""
    labels = np.asarray(labels, dtype=np.int64)
    k = samples_per_node
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise DataError(f"data.samples_per_node must be an integer >= 1 (or null), got {k!r}")
    if scheme not in OVERLAP_SCHEMES:
        raise DataError(
            f"data.samples_per_node draws shards by {', '.join(OVERLAP_SCHEMES)}, not "
            f"data.partition={scheme!r}: shots already fixes a node's size (data.shots per "
            "class); leave data.samples_per_node null, or use another partition"
        )
    if len(labels) == 0:
        raise DataError("data.samples_per_node: the training pool is empty")
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]  # (n_c,) each, sorted
    n_classes = len(classes)
    if scheme == "classes" and not 1 <= classes_per_node <= n_classes:
        raise DataError(
            f"classes_per_node must be an integer in 1..{n_classes} (number of classes), "
            f"got {classes_per_node!r}"
        )
    if scheme == "dirichlet" and not (math.isfinite(alpha) and alpha > 0):
        raise DataError(f"dirichlet alpha must be a finite number > 0, got {alpha!r}")
    order = np.random.default_rng([seed, _STREAM]).permutation(n_classes)  # classes scheme
    parts = []
    for i in range(int(n_nodes)):
        rng = np.random.default_rng([seed, _STREAM, i])
        if scheme == "iid":
            rows = _take(np.arange(len(labels)), k, rng)
        elif scheme == "dirichlet":
            q = rng.dirichlet(np.full(n_classes, float(alpha)))
            if not np.all(np.isfinite(q)) or q.sum() <= 0:  # extreme alpha underflow
                q = np.eye(n_classes)[rng.integers(n_classes)]
            rows = _node_rows(by_class, rng.multinomial(k, q / q.sum()), rng)
        else:
            held = order[(i * classes_per_node + np.arange(classes_per_node)) % n_classes]
            counts = np.zeros(n_classes, dtype=np.int64)
            counts[held] = [len(a) for a in np.array_split(np.arange(k), classes_per_node)]
            rows = _node_rows(by_class, counts, rng)
        parts.append(np.sort(rows).astype(np.int64, copy=False))
    return parts


def shard_overlap(parts: list[np.ndarray], pool_size: int) -> ShardOverlap:
    """What ``parts`` (index arrays into a pool of ``pool_size`` rows) share."""
    distinct = [np.unique(p) for p in parts]
    holders = np.bincount(np.concatenate(distinct), minlength=pool_size)  # (pool_size,)
    shared = [float(np.mean(holders[d] > 1)) if len(d) else 0.0 for d in distinct]
    union = int(np.count_nonzero(holders))
    return ShardOverlap(
        overlap=float(np.mean(shared)),
        copies=float(holders.sum() / max(union, 1)),
        coverage=union / max(pool_size, 1),
    )
