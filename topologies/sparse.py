"""When a mixing matrix is stored sparse, and the conversions the checks share.

Rule (:func:`prefers_sparse`): Pi is a ``scipy.sparse.csr_array`` when n > SPARSE_ABOVE_N
(2,048) and at most SPARSE_MAX_FILL (5%) of its n^2 entries can be non-zero (nnz <= n + 2|E|);
otherwise a dense ``numpy`` array, as every result of n <= 2,048 nodes was before sparse
matrices existed (so those stay bit-identical). A dense 2,048 x 2,048 float64 matrix is 32 MiB;
at n = 16,384 it would be 2 GiB, while a ring's CSR matrix is 0.6 MiB.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

SPARSE_ABOVE_N = 2048  # n above this: sparse, if the graph is sparse enough
SPARSE_MAX_FILL = 0.05  # ... i.e. nnz <= 5% of n^2

Matrix = np.ndarray | sp.sparray | sp.spmatrix  # what rules return and checks accept


def prefers_sparse(n: int, nnz: int) -> bool:
    """Whether an n x n matrix with at most nnz non-zeros is stored as a csr_array."""
    return n > SPARSE_ABOVE_N and nnz <= SPARSE_MAX_FILL * n * n


def is_sparse(Pi: object) -> bool:
    return sp.issparse(Pi)


def as_csr(Pi: Matrix) -> sp.csr_array:
    """Pi as a float64 csr_array in canonical form (sorted indices, no duplicates, no stored
    zeros), so that its entries come in row-major order like ``np.argwhere``'s."""
    csr = sp.csr_array(Pi, dtype=np.float64)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


def as_dense(Pi: Matrix) -> np.ndarray:
    """Pi as a float64 numpy array (a copy only when Pi is sparse or not float64)."""
    if sp.issparse(Pi):
        return Pi.toarray().astype(np.float64, copy=False)
    return np.asarray(Pi, dtype=np.float64)
