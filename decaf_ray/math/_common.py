"""Private helpers shared by the ``decaf_ray.math`` modules: input checks and dtype rules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_float64(x: object, name: str = "array") -> np.ndarray:
    """Return ``x`` as a real float64 array (a view when it already is one; callers never write).

    Raises ``TypeError`` for complex input, which every function here treats as a bug.
    """
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64)


def out_dtype(x: object) -> np.dtype:
    """The dtype results are returned in: that of ``x`` when it is floating, float64 otherwise."""
    dtype = np.asarray(x).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def as_weights(weights: Sequence[float] | np.ndarray, name: str = "weights") -> np.ndarray:
    """Return ``weights`` as a 1-D float64 vector of finite values."""
    w = as_float64(weights, name)
    if w.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} must be finite, got {w}")
    return w


def check_factor_pairs(
    Bs: Sequence[np.ndarray], As: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Check LoRA factor pairs and return them as float64 lists.

    Each B_j must be (d, r_j) and each A_j (r_j, k), with d and k shared by all pairs (the ranks
    r_j may differ). Raises ``ValueError`` naming the offending index and shapes.
    """
    if len(Bs) != len(As):
        raise ValueError(f"got {len(Bs)} B factors but {len(As)} A factors")
    if len(Bs) == 0:
        raise ValueError("need at least one (B, A) factor pair")
    B64 = [as_float64(B, f"Bs[{j}]") for j, B in enumerate(Bs)]
    A64 = [as_float64(A, f"As[{j}]") for j, A in enumerate(As)]
    d = B64[0].shape[0] if B64[0].ndim == 2 else None
    k = A64[0].shape[1] if A64[0].ndim == 2 else None
    for j, (B, A) in enumerate(zip(B64, A64, strict=True)):
        if B.ndim != 2 or A.ndim != 2:
            raise ValueError(f"pair {j}: B and A must be 2-D, got shapes {B.shape} and {A.shape}")
        if B.shape[1] != A.shape[0]:
            raise ValueError(
                f"pair {j}: B is {B.shape} and A is {A.shape}; need B (d, r) and A (r, k)"
            )
        if B.shape[0] != d or A.shape[1] != k:
            raise ValueError(
                f"pair {j}: product is {B.shape[0]} x {A.shape[1]}, but pair 0 gives {d} x {k}"
            )
    return B64, A64


def check_weights_length(w: np.ndarray, m: int, what: str) -> None:
    """Raise ``ValueError`` naming both lengths when ``len(w) != m``."""
    if w.shape[0] != m:
        raise ValueError(f"got {w.shape[0]} weights but {m} {what}")
