"""Gossip mixing: weighted sums of arrays with a mixing matrix Pi.

All sums are accumulated in float64 and returned in the dtype of the first array (float64 when
that is not a floating dtype). Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decaf_ray.math._common import as_float64, as_weights, check_weights_length, out_dtype

__all__ = ["mix", "mix_all", "renormalise"]


def _weighted_sum(w: np.ndarray, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """sum_j w_j X_j in float64 over the terms with w_j != 0 (zeros if there are none)."""
    first = np.asarray(arrays[0])
    total = np.zeros(first.shape, dtype=np.float64)
    for j, (w_j, X) in enumerate(zip(w, arrays, strict=True)):
        X_j = np.asarray(X)
        if X_j.shape != first.shape:
            raise ValueError(f"arrays[{j}] has shape {X_j.shape}, arrays[0] has {first.shape}")
        if w_j != 0.0:
            total += w_j * as_float64(X_j, f"arrays[{j}]")
    return total


def mix(weights: Sequence[float] | np.ndarray, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Weighted sum of same-shaped arrays: X' = sum_j w_j X_j.

    Args:
        weights: m weights w_j (any sign; terms with w_j == 0 are skipped, so a node that was
            not heard from may be passed with weight 0).
        arrays: m arrays X_j of one common shape.

    Returns:
        A new array of that shape, in the dtype of ``arrays[0]``.

    Raises:
        ValueError: if the numbers of weights and arrays differ, there are none, or shapes differ.
    """
    w = as_weights(weights)
    check_weights_length(w, len(arrays), "arrays")
    if len(arrays) == 0:
        raise ValueError("mix needs at least one array")
    return _weighted_sum(w, arrays).astype(out_dtype(arrays[0]), copy=False)


def mix_all(Pi: np.ndarray, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One gossip round for every node: X_i' = sum_j Pi[i, j] X_j.

    Args:
        Pi: (n, n) mixing matrix; row i holds node i's weights. Zero entries are skipped, so each
            node only touches the arrays of its neighbours (and itself).
        arrays: n arrays X_j of one common shape, node j's copy of the quantity being mixed.

    Returns:
        A list of n new arrays, each in the dtype of ``arrays[0]``.

    Raises:
        ValueError: if Pi is not square, its size differs from the number of arrays, or shapes
            differ.
    """
    P = as_float64(Pi, "Pi")
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"Pi must be a square matrix, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError("Pi must be finite")
    n = P.shape[0]
    if len(arrays) != n:
        raise ValueError(f"Pi is {n} x {n} but got {len(arrays)} arrays")
    if n == 0:
        return []
    shape = np.asarray(arrays[0]).shape
    for j, X in enumerate(arrays):
        if np.asarray(X).shape != shape:
            raise ValueError(f"arrays[{j}] has shape {np.asarray(X).shape}, arrays[0] has {shape}")
    dtype = out_dtype(arrays[0])
    X64 = [as_float64(X, f"arrays[{j}]") for j, X in enumerate(arrays)]
    out: list[np.ndarray] = []
    for i in range(n):
        total = np.zeros(shape, dtype=np.float64)
        for j in np.flatnonzero(P[i]):
            total += P[i, j] * X64[j]
        out.append(total.astype(dtype, copy=False))
    return out


def renormalise(weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Scale weights to sum to one: w / sum(w).

    Args:
        weights: 1-D weights (shard sizes, surviving neighbours' Pi entries, ...).

    Returns:
        A new float64 vector of the same length (float64 regardless of the input dtype).

    Raises:
        ValueError: if the weights are not 1-D and finite, or their sum is not positive.
    """
    w = as_weights(weights)
    total = float(w.sum())
    if not total > 0.0:
        raise ValueError(f"weights must have a positive sum to renormalise, got sum {total}")
    return w / total
