"""Consensus and interference metrics for one LoRA module, computed from the factors.

Frobenius norms of sums of low-rank products expand into traces of small Gram matrices,
||B_cat A_cat||_F^2 = trace((B_cat^T B_cat)(A_cat A_cat^T)); the d x k product is formed only
where it is cheaper (a stack wider than the layer). These functions check their numpy inputs
and call the batched torch versions in :mod:`decaf_ray.math.stacked` with one batch entry.
Every metric is a float64 Python ``float``; inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from decaf_ray.math._common import (
    as_float64,
    as_weights,
    check_factor_pairs,
    check_weights_length,
)
from decaf_ray.math.stacked import (
    factor_consensus_stacked,
    interference_stacked,
    product_consensus_stacked,
    sq_norm_stacked,
)

__all__ = [
    "factor_consensus_error",
    "interference_norm",
    "lowrank_sq_norm",
    "payload_bytes",
    "product_consensus_error",
]


def _t(x: np.ndarray) -> torch.Tensor:
    """A float64 numpy array as a torch tensor sharing its memory (never written)."""
    return torch.from_numpy(np.ascontiguousarray(x))


def _sq_norm_64(Bs: Sequence[np.ndarray], As: Sequence[np.ndarray], w: np.ndarray) -> float:
    """||sum_j w_j B_j A_j||_F^2 for already-checked float64 factors, skipping w_j == 0."""
    keep = [j for j in range(len(w)) if w[j] != 0.0]
    if not keep:
        return 0.0
    B_cat = np.concatenate([w[j] * Bs[j] for j in keep], axis=1)
    A_cat = np.concatenate([As[j] for j in keep], axis=0)
    return float(sq_norm_stacked(_t(B_cat), _t(A_cat)))


def lowrank_sq_norm(
    Bs: Sequence[np.ndarray],
    As: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Squared Frobenius norm of a weighted sum of low-rank products.

    ||sum_j w_j B_j A_j||_F^2 = trace((B_cat^T B_cat)(A_cat A_cat^T)) with
    B_cat = [w_1 B_1, ..., w_m B_m] (d, R) and A_cat = [A_1; ...; A_m] (R, k), R = sum_j r_j.
    Cost O((d + k) R^2).

    Args:
        Bs: m factors B_j, each (d, r_j).
        As: m factors A_j, each (r_j, k).
        weights: m weights w_j; ``None`` means all ones.

    Returns:
        The squared norm as a float (clamped at 0 against rounding).
    """
    B64, A64 = check_factor_pairs(Bs, As)
    if weights is None:
        w = np.ones(len(B64))
    else:
        w = as_weights(weights)
        check_weights_length(w, len(B64), "factor pairs")
    return _sq_norm_64(B64, A64, w)


def _check_uniform(Xs: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    if len(Xs) == 0:
        raise ValueError(f"{name} must hold at least one array")
    X64 = [as_float64(X, f"{name}[{i}]") for i, X in enumerate(Xs)]
    for i, X in enumerate(X64):
        if X.shape != X64[0].shape:
            raise ValueError(f"{name}[{i}] has shape {X.shape}, {name}[0] has {X64[0].shape}")
    return X64


def product_consensus_error(Bs: Sequence[np.ndarray], As: Sequence[np.ndarray]) -> float:
    """Spread of the nodes' LoRA updates around their mean.

    (1/n) sum_i ||B_i A_i - M||_F^2 with M = (1/n) sum_j B_j A_j, evaluated as
    (1/n) sum_i ||X_i||_F^2 - ||(1/n) sum_i X_i||_F^2 (clamped at 0), which holds for any shift
    X_i = B_i A_i - C. The shift C = B_0 A_0 (node 0's update) keeps both terms small when the
    nodes are near consensus, so the subtraction does not cancel catastrophically: with
    dB_i = B_i - B_0 and dA_i = A_i - A_0, X_i = dB_i A_i + B_0 dA_i = [dB_i, B_0] [A_i; dA_i].

    Args:
        Bs: n factors B_i, all (d, r).
        As: n factors A_i, all (r, k).

    Returns:
        The error as a float; exactly 0 when all nodes hold the same factors.
    """
    B64, A64 = check_factor_pairs(Bs, As)
    B64 = _check_uniform(B64, "Bs")
    A64 = _check_uniform(A64, "As")
    return float(product_consensus_stacked(_t(np.stack(B64)), _t(np.stack(A64))))


def factor_consensus_error(Xs: Sequence[np.ndarray]) -> float:
    """Spread of one factor (all A_i or all B_i) around its network mean.

    (1/n) sum_i ||X_i - X_mean||_F^2 with X_mean = (1/n) sum_i X_i; all X_i share one shape.
    The deviations are taken from X_0 first (X_i - X_mean = D_i - mean_j D_j, D_i = X_i - X_0),
    so identical factors give exactly 0.
    """
    X64 = _check_uniform(Xs, "Xs")
    return float(factor_consensus_stacked(_t(np.stack(X64).reshape(len(X64), -1))))


def interference_norm(
    Bs: Sequence[np.ndarray],
    As: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray,
) -> float:
    """Consensus interference ||P - B_bar A_bar||_F of mixing the factors separately.

    P = sum_j w_j B_j A_j, B_bar = sum_j w_j B_j, A_bar = sum_j w_j A_j. When the weights sum to
    one (a row of Pi) this is the weighted cross-covariance of the factors,
    P - B_bar A_bar = sum_j w_j (B_j - B_bar)(A_j - A_bar).

    Computed as the low-rank norm of stacked factors, in a form that stays accurate when the
    interference is small next to ||P|| (the plain stacking [w_j B_j ..., -B_bar] [A_j; ...;
    A_bar] is equal in exact arithmetic but loses about half the digits to cancellation).
    Relative to a reference pair (B_0, A_0) (the first term with w_j != 0), with
    dB_j = B_j - B_0, dA_j = A_j - A_0, dB = sum_j w_j dB_j, dA = sum_j w_j dA_j, s = sum_j w_j:

        P - B_bar A_bar = sum_j w_j dB_j dA_j - dB dA + (1 - s) (B_0 dA + B_bar A_0).

    So the result is exactly 0 when all A_j (or all B_j) are equal and s == 1, as in dLoRA-FA.

    Args:
        Bs: m factors B_j, all (d, r).
        As: m factors A_j, all (r, k).
        weights: m weights w_j (normally a row of Pi); w_j == 0 terms are skipped.

    Returns:
        The Frobenius norm as a float.
    """
    B64, A64 = check_factor_pairs(Bs, As)
    B64 = _check_uniform(B64, "Bs")
    A64 = _check_uniform(A64, "As")
    w = as_weights(weights)
    check_weights_length(w, len(B64), "factor pairs")
    keep = [j for j in range(len(w)) if w[j] != 0.0]
    if not keep:
        return 0.0
    B = _t(np.stack([B64[j] for j in keep]))  # (m, d, r)
    A = _t(np.stack([A64[j] for j in keep]))  # (m, r, k)
    return float(interference_stacked(B, A, torch.from_numpy(w[keep])))


def payload_bytes(arrays: Sequence[np.ndarray]) -> int:
    """Bytes needed to send ``arrays``: sum of their ``nbytes`` (anything with ``nbytes`` works)."""
    total = 0
    for a in arrays:
        nbytes = getattr(a, "nbytes", None)
        total += int(nbytes) if nbytes is not None else int(np.asarray(a).nbytes)
    return total
