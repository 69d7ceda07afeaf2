"""Seeded, stratified splitting and non-IID partitioning of labelled samples over nodes."""

from __future__ import annotations

import math

import numpy as np

from decaf_ray.data.sources import DataError

__all__ = [
    "PARTITION_SCHEMES",
    "label_histogram",
    "partition",
    "stratified_subsample",
    "train_test_split",
]

PARTITION_SCHEMES: tuple[str, ...] = ("classes", "dirichlet", "iid", "shots")


def _as_labels(labels: np.ndarray) -> np.ndarray:
    """Validate and return ``labels`` as a 1-D int64 array."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _class_indices(labels: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Shuffled sample indices per class (classes in sorted order)."""
    return {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}


def train_test_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split into sorted ``(train_idx, test_idx)`` index arrays.

    Each class contributes ``round(n_c * test_fraction)`` samples to test, clamped to
    ``[1, n_c - 1]`` so both sides hold every class that has at least two samples
    (single-sample classes go to train).
    """
    labels = _as_labels(labels)
    if not (isinstance(test_fraction, int | float) and 0.0 < float(test_fraction) < 1.0):
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction!r}: use e.g. 0.2")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for idx in _class_indices(labels, rng).values():
        n_c = len(idx)
        n_test = 0 if n_c < 2 else min(max(round(n_c * test_fraction), 1), n_c - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    empty = np.empty(0, dtype=np.int64)
    return (
        np.sort(np.concatenate(train)) if train else empty,
        np.sort(np.concatenate(test)) if test else empty,
    )


def stratified_subsample(
    indices: np.ndarray, labels: np.ndarray, max_samples: int | None, seed: int
) -> np.ndarray:
    """Seeded subsample of ``indices`` (into ``labels``) keeping class proportions; sorted.

    Per-class quotas use largest-remainder rounding of ``max_samples * n_c / n``. Returns
    ``indices`` unchanged when ``max_samples`` is None or ``>= len(indices)``.
    """
    indices = np.asarray(indices)
    if max_samples is None or max_samples >= len(indices):
        return indices
    if max_samples < 1:
        raise DataError(f"max_samples must be >= 1 or None, got {max_samples!r}")
    labels = _as_labels(labels)
    sub_labels = labels[indices]
    classes, counts = np.unique(sub_labels, return_counts=True)
    exact = max_samples * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    short = max_samples - int(quota.sum())
    if short > 0:
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[:short]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(indices[sub_labels == c], size=int(q), replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked)).astype(indices.dtype, copy=False)


def _split_evenly(idx: np.ndarray, n: int) -> list[np.ndarray]:
    return list(np.array_split(idx, n))


def _iid(n_samples: int, n_nodes: int, rng: np.random.Generator) -> list[np.ndarray]:
    return _split_evenly(rng.permutation(n_samples), n_nodes)


def _dirichlet(
    labels: np.ndarray, n_nodes: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, node proportions ~ Dir(alpha); then fill empty nodes from the largest shard."""
    shards: list[list[int]] = [[] for _ in range(n_nodes)]
    for idx in _class_indices(labels, rng).values():
        p = rng.dirichlet(np.full(n_nodes, alpha))
        if not np.all(np.isfinite(p)) or p.sum() <= 0:  # extreme alpha underflow
            p = np.zeros(n_nodes)
            p[rng.integers(n_nodes)] = 1.0
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for node, part in enumerate(np.split(idx, cuts)):
            shards[node].extend(part.tolist())
    # Guarantee non-empty shards: move one random sample from the (first) largest shard into
    # each empty node. Since n_samples >= n_nodes, the largest shard then has >= 2 samples.
    for node in range(n_nodes):
        if not shards[node]:
            donor = max(range(n_nodes), key=lambda k: len(shards[k]))
            shards[node].append(shards[donor].pop(int(rng.integers(len(shards[donor])))))
    return [np.asarray(s, dtype=np.int64) for s in shards]


def _by_classes(
    labels: np.ndarray, n_nodes: int, classes_per_node: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Round-robin class assignment over a seeded class permutation; even split per class."""
    classes = np.unique(labels)
    n_classes = len(classes)
    order = classes[rng.permutation(n_classes)]
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for node in range(n_nodes):
        for j in range(classes_per_node):
            holders[int(order[(node * classes_per_node + j) % n_classes])].append(node)
    shards: list[list[np.ndarray]] = [[] for _ in range(n_nodes)]
    for c, idx in _class_indices(labels, rng).items():
        if holders[c]:
            for node, part in zip(holders[c], _split_evenly(idx, len(holders[c])), strict=True):
                shards[node].append(part)
    parts = [np.concatenate(s) if s else np.empty(0, dtype=np.int64) for s in shards]
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(
            f"partition 'classes' left node(s) {empty} empty ({len(labels)} samples, "
            f"{n_nodes} nodes, classes_per_node={classes_per_node}): use fewer nodes or more data"
        )
    return parts


def _shots(
    labels: np.ndarray, n_nodes: int, shots: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if not isinstance(shots, int | np.integer) or isinstance(shots, bool) or shots < 1:
        raise DataError(f"data.shots must be an integer >= 1, got {shots!r}")
    parts: list[list[np.ndarray]] = [[] for _ in range(n_nodes)]
    for c, idx in sorted(_class_indices(labels, rng).items()):
        if len(idx) < n_nodes * shots:
            raise DataError(
                f"class {c} has {len(idx)} training samples, fewer than {n_nodes} nodes x "
                f"{shots} shots: lower data.shots or topology.n, or use more data"
            )
        for i in range(n_nodes):
            parts[i].append(idx[i * shots : (i + 1) * shots])
    return [np.concatenate(p) for p in parts]


def partition(
    labels: np.ndarray,
    n_nodes: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    classes_per_node: int = 2,
    shots: int = 4,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` over ``n_nodes``; one sorted int64 array per node.

    Schemes:
      * ``iid``: seeded shuffle, then near-equal split (sizes differ by at most 1).
      * ``dirichlet``: per class, node proportions ~ Dir(``alpha``) (small alpha = more skew).
        Afterwards every empty node receives one random sample moved from the currently
        largest shard, so all nodes are non-empty.
      * ``classes``: each node holds ``classes_per_node`` distinct classes, assigned round-robin
        over a seeded class permutation (all classes covered when
        ``n_nodes * classes_per_node >= C``); each class's samples are split evenly among its
        holders. Classes held by no node are left out.
      * ``shots``: few-shot, as CLIP-LoRA's benchmarks: each node holds ``shots`` samples of
        every class, drawn without replacement; the rest are left out.

    Shards are disjoint; ``iid`` and ``dirichlet`` cover every sample.
    """
    labels = _as_labels(labels)
    if not isinstance(n_nodes, int | np.integer) or isinstance(n_nodes, bool) or n_nodes < 1:
        raise DataError(f"n_nodes must be an integer >= 1, got {n_nodes!r}")
    n_nodes = int(n_nodes)
    if scheme not in PARTITION_SCHEMES:
        raise DataError(
            f"unknown partition scheme {scheme!r}; known schemes: {', '.join(PARTITION_SCHEMES)}"
        )
    n_samples = len(labels)
    if n_samples < n_nodes:
        raise DataError(
            f"cannot partition {n_samples} samples for {n_nodes} nodes: use fewer nodes, "
            "more data (data.max_samples) or shards that overlap (data.samples_per_node)"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = _iid(n_samples, n_nodes, rng)
    elif scheme == "shots":
        parts = _shots(labels, n_nodes, shots, rng)
    elif scheme == "dirichlet":
        if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
            raise DataError(
                f"dirichlet alpha must be a finite number > 0, got {alpha!r}: "
                "use e.g. 0.5 (smaller = more skewed, large = near-IID)"
            )
        parts = _dirichlet(labels, n_nodes, float(alpha), rng)
    else:
        n_classes = len(np.unique(labels))
        if (
            not isinstance(classes_per_node, int | np.integer)
            or isinstance(classes_per_node, bool)
            or not 1 <= classes_per_node <= n_classes
        ):
            raise DataError(
                f"classes_per_node must be an integer in 1..{n_classes} (number of classes), "
                f"got {classes_per_node!r}"
            )
        parts = _by_classes(labels, n_nodes, int(classes_per_node), rng)
    return [np.sort(p).astype(np.int64, copy=False) for p in parts]


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-node class counts, shape ``(len(parts), num_classes)``, int64."""
    labels = _as_labels(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels range {labels.min()}..{labels.max()} does not fit num_classes={num_classes}"
        )
    hist = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, p in enumerate(parts):
        hist[i] = np.bincount(labels[np.asarray(p, dtype=np.int64)], minlength=num_classes)
    return hist
