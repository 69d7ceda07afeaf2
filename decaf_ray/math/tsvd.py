"""Truncated SVD of a weighted sum of LoRA products, and its split back into factors.

DeCAF's consensus step: P = sum_j w_j B_j A_j with B_j (d, r_j) and A_j (r_j, k); keep the best
rank-``rank`` approximation U S Vh of P (Eckart-Young) and split it into new factors B, A.
``tsvd_factored`` never forms the d x k matrix P; ``tsvd_dense`` is the reference.

All linear algebra runs in float64. U, S and Vh come back in the dtype of the first input
(float64 when that is not floating); ``all_singular_values`` is always float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from decaf_ray.math._common import (
    as_float64,
    as_weights,
    check_factor_pairs,
    check_weights_length,
    out_dtype,
)
from decaf_ray.math.stacked import split_stacked, tsvd_stacked

__all__ = ["TSVD", "SplitMode", "split_factors", "tsvd_dense", "tsvd_factored"]

SplitMode = Literal["balanced", "all_in_B"]
_SPLIT_MODES: tuple[str, ...] = ("balanced", "all_in_B")


@dataclass(frozen=True, eq=False)
class TSVD:
    """A rank-``rank`` truncated SVD U S Vh of a d x k matrix P.

    Attributes:
        U: (d, rank) left singular vectors, orthonormal columns (zero columns past the rank of P).
        S: (rank,) kept singular values, descending, non-negative (zero-padded past rank(P)).
        Vh: (rank, k) right singular vectors as rows (zero rows past the rank of P).
        tail_energy: sum_{i > rank} sigma_i(P)^2 = ||P - U diag(S) Vh||_F^2, the squared error of
            the truncation, as a Python float.
        all_singular_values: float64 vector of length min(d, k): the full spectrum of P,
            descending (entries beyond the size of the factored core are exact zeros).

    ``eq=False``: instances compare and hash by identity (array fields have no scalar ``==``).
    """

    U: np.ndarray
    S: np.ndarray
    Vh: np.ndarray
    tail_energy: float
    all_singular_values: np.ndarray

    @property
    def rank(self) -> int:
        """The truncation rank (number of kept singular triplets, padding included)."""
        return int(self.S.shape[0])


def _check_rank(rank: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    return int(rank)


def _assemble(
    U_keep: np.ndarray,
    s: np.ndarray,
    V_keep: np.ndarray,
    d: int,
    k: int,
    rank: int,
    dtype: np.dtype,
) -> TSVD:
    """Pad the kept triplets to (d, rank), (rank,), (rank, k) and compute the tail.

    ``s`` is the float64 spectrum (descending), ``U_keep`` (d, q) and ``V_keep`` (k, q) hold the
    first q = min(rank, len(s)) singular vectors.
    """
    q = U_keep.shape[1]
    U = np.zeros((d, rank), dtype=dtype)
    S = np.zeros(rank, dtype=dtype)
    Vh = np.zeros((rank, k), dtype=dtype)
    U[:, :q] = U_keep
    S[:q] = s[:q]
    Vh[:q, :] = V_keep.T
    tail_energy = float(np.sum(s[q:] ** 2))
    spectrum = np.zeros(min(d, k), dtype=np.float64)
    spectrum[: s.shape[0]] = s
    return TSVD(U=U, S=S, Vh=Vh, tail_energy=tail_energy, all_singular_values=spectrum)


def tsvd_factored(
    Bs: Sequence[np.ndarray],
    As: Sequence[np.ndarray],
    weights: Sequence[float] | np.ndarray,
    rank: int,
) -> TSVD:
    """Rank-``rank`` TSVD of P = sum_j w_j B_j A_j without forming the d x k matrix P.

    With B_cat = [w_1 B_1, ..., w_m B_m] (d, R) and A_cat = [A_1; ...; A_m] (R, k), R = sum r_j,
    P = B_cat A_cat. Reduced QR gives B_cat = Q_B R_B and A_cat^T = Q_A R_A, so
    P = Q_B (R_B R_A^T) Q_A^T. The SVD of the small core R_B R_A^T = U_c S V_c^T yields
    U = Q_B U_c[:, :rank] and Vh = (Q_A V_c[:, :rank])^T. Cost O((d + k) R^2) instead of the
    O(d k min(d, k)) of a dense SVD. (The kernel is :func:`decaf_ray.math.stacked.tsvd_stacked`.)

    Args:
        Bs: m factors B_j, each (d, r_j).
        As: m factors A_j, each (r_j, k).
        weights: m weights w_j (any sign); terms with w_j == 0 are skipped.
        rank: number of singular triplets to keep (>= 1).

    Returns:
        A ``TSVD`` with U (d, rank), S (rank,), Vh (rank, k) in the dtype of ``Bs[0]``, always
        these shapes: when rank exceeds min(d, k, R) the extra triplets are zeros.
    """
    rank = _check_rank(rank)
    B64, A64 = check_factor_pairs(Bs, As)
    w = as_weights(weights)
    check_weights_length(w, len(B64), "factor pairs")
    d, k = B64[0].shape[0], A64[0].shape[1]
    dtype = out_dtype(Bs[0])

    keep = [j for j in range(len(w)) if w[j] != 0.0]
    if not keep or sum(B64[j].shape[1] for j in keep) == 0:
        empty = np.zeros(0, dtype=np.float64)
        return _assemble(np.zeros((d, 0)), empty, np.zeros((k, 0)), d, k, rank, dtype)

    B_cat = np.concatenate([w[j] * B64[j] for j in keep], axis=1)  # (d, R)
    A_cat = np.concatenate([A64[j] for j in keep], axis=0)  # (R, k)
    U, _, Vh, s = (
        x.numpy() for x in tsvd_stacked(torch.from_numpy(B_cat), torch.from_numpy(A_cat), rank)
    )
    q = min(rank, s.shape[0])
    return _assemble(U[:, :q], s, Vh[:q, :].T, d, k, rank, dtype)


def tsvd_dense(P: np.ndarray, rank: int) -> TSVD:
    """Reference rank-``rank`` TSVD of a dense (d, k) matrix P via ``np.linalg.svd``.

    Same conventions and padding as ``tsvd_factored``; results in the dtype of ``P``.
    Cost O(d k min(d, k)): use it in tests and for small matrices.
    """
    rank = _check_rank(rank)
    P64 = as_float64(P, "P")
    if P64.ndim != 2:
        raise ValueError(f"P must be 2-D, got shape {P64.shape}")
    d, k = P64.shape
    U_full, s, Vh_full = np.linalg.svd(P64, full_matrices=False)
    q = min(rank, s.shape[0])
    return _assemble(U_full[:, :q], s, Vh_full[:q, :].T, d, k, rank, out_dtype(P))


def split_factors(tsvd: TSVD, mode: SplitMode | str = "balanced") -> tuple[np.ndarray, np.ndarray]:
    """Split U diag(S) Vh into new LoRA factors (B, A) with B @ A = U diag(S) Vh.

    Modes:
        ``"balanced"``: B = U S^{1/2} (d, rank), A = S^{1/2} Vh (rank, k); ||B||_F = ||A||_F.
        ``"all_in_B"``: B = U S (d, rank), A = Vh (rank, k); A has orthonormal rows.

    Returns new arrays in the dtype of ``tsvd.U``.

    Raises:
        ValueError: for an unknown mode, naming it.
    """
    if mode not in _SPLIT_MODES:
        raise ValueError(f"unknown split mode {mode!r}; expected one of {_SPLIT_MODES}")
    dtype = out_dtype(tsvd.U)
    B, A = split_stacked(
        torch.from_numpy(as_float64(tsvd.U, "U")),
        torch.from_numpy(as_float64(tsvd.S, "S")),
        torch.from_numpy(as_float64(tsvd.Vh, "Vh")),
        mode,
    )
    return B.numpy().astype(dtype, copy=False), A.numpy().astype(dtype, copy=False)
