"""A mixing matrix read through its non-zero entries, dense or scipy.sparse alike.

The planners never scan a row or a column of Pi (n x n): they ask for node i's neighbours,
``row(i)`` = {j: Pi_ij} over Pi_ij != 0 (the messages i weighs, its own included), and for
``receivers(j)`` = [i != j : Pi_ij != 0] (the nodes j sends its message to), both in
ascending node order, which is the order of a dense scan. Memory is O(n + nnz), so a ring of
16,384 nodes costs a few hundred KB where the dense matrix costs 2 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class Neighbours:
    """Pi in compressed rows (i -> j, Pi_ij) and compressed columns (j -> i)."""

    n: int
    row_ptr: np.ndarray  # (n + 1,) int64: row i's entries are row_ids[row_ptr[i]:row_ptr[i+1]]
    row_ids: np.ndarray  # (nnz,) int64: j, ascending within a row
    row_w: np.ndarray  # (nnz,) float64: Pi_ij, exactly the matrix's values
    col_ptr: np.ndarray  # (n + 1,) int64: column j's entries are col_ids[col_ptr[j]:...]
    col_ids: np.ndarray  # (nnz,) int64: i, ascending within a column

    @classmethod
    def of(cls, Pi) -> Neighbours:
        """From a dense (n, n) ndarray or any scipy.sparse matrix or array (n, n)."""
        if sp.issparse(Pi):
            rows = sp.csr_array(Pi, dtype=np.float64, copy=True)
            rows.eliminate_zeros()  # explicit zeros are no edge, as in a dense scan
        else:
            rows = sp.csr_array(np.asarray(Pi, dtype=np.float64))
        if rows.shape[0] != rows.shape[1]:
            raise ValueError(f"a mixing matrix must be square (n x n), got shape {rows.shape}")
        rows.sort_indices()
        cols = rows.tocsc()
        cols.sort_indices()
        return cls(
            rows.shape[0],
            rows.indptr.astype(np.int64),
            rows.indices.astype(np.int64),
            rows.data,
            cols.indptr.astype(np.int64),
            cols.indices.astype(np.int64),
        )

    def row(self, i: int) -> dict[int, float]:
        """{j: Pi_ij} for every Pi_ij != 0, in ascending j."""
        a, b = self.row_ptr[i], self.row_ptr[i + 1]
        return dict(zip(self.row_ids[a:b].tolist(), self.row_w[a:b].tolist()))

    def receivers(self, j: int) -> list[int]:
        """Nodes i != j with Pi_ij != 0, ascending: those that weigh (so are sent) j's message."""
        a, b = self.col_ptr[j], self.col_ptr[j + 1]
        return [i for i in self.col_ids[a:b].tolist() if i != j]

    @cached_property
    def links(self) -> np.ndarray:
        """(L, 2) int64 directed links (sender j, receiver i), i != j, Pi_ij != 0, sorted by
        (j, i): the messages a round can carry."""
        j = np.repeat(np.arange(self.n, dtype=np.int64), np.diff(self.col_ptr))
        pairs = np.stack([j, self.col_ids], axis=1)
        return pairs[pairs[:, 0] != pairs[:, 1]]


__all__ = ["Neighbours"]
