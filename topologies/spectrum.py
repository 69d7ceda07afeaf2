"""|lambda_2|, the second-largest eigenvalue modulus of a mixing matrix Pi (n x n).

- n <= DENSE_EIG_MAX_N (2,048): dense ``eigvalsh`` (``eigvals`` when Pi is not symmetric),
  exactly as before sparse matrices existed; O(n^3), 4 s at n = 4,096 here, hours at 10^5.
- Larger n, Pi symmetric, non-negative with rows summing to 1 (a gossip matrix): its top
  eigenvector is the all-ones vector 1 (eigenvalue 1), so |lambda_2| = max(lambda_top,
  -lambda_min) with lambda_top the largest eigenvalue on the complement of 1. Two solvers,
  chosen by the reverse Cuthill-McKee bandwidth b of Pi (found in O(nnz); a banded LU costs
  at most n b^2 flops and n b entries):
  * n b^2 <= BANDED_MAX_FLOPS or b <= 4 sqrt(n) (rings, tori, grid-like graphs, where
    the gap can be 1e-7 and Lanczos on Pi would need millions of steps): shift-invert.
    1 - lambda_top is the smallest non-zero eigenvalue of L = I - Pi; the grounded system
    (L without row and column 0) is factorised once (sparse LU) and ``eigsh`` runs on
    L^+ = P L_grounded^-1 P (P projects out 1), whose top eigenvalue 1 / (1 - lambda_top) is
    well separated. 1 + lambda_min >= 2 min_i Pi_ii (Gershgorin); only when that bound does
    not already exceed 1 - lambda_top is (I + Pi)^-1 factorised the same way.
    Accuracy: the gap to a relative EIGSH_TOL (1e-10).
  * otherwise (expander-like graphs: Erdos-Renyi, random regular, exponential, small worlds,
    whose gaps are >= 1e-4): Lanczos, ``eigsh(Pi - 1 1^T / n, k=1, which="LM")``, which gives
    |lambda_2| itself to a relative EIGSH_TOL, i.e. the gap to an absolute ~1e-10.
- Larger n and not a gossip matrix (a broken matrix, whose problems ``check_mixing`` lists
  anyway): NaN, not computed (``eigs`` on a non-symmetric 16,384-node Pi took tens of seconds).
When ARPACK does not converge in LANCZOS_MAXITER restarts the modulus is NaN too, and
``check_mixing`` says so. The starting vector is fixed, so results are reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
from scipy.sparse.csgraph import reverse_cuthill_mckee

from topologies.sparse import Matrix, as_csr, as_dense

DENSE_EIG_MAX_N = 2048
BANDED_MAX_FLOPS = 2e9  # n b^2 bounds a banded LU's flops; 10^4-node torus: 4e8, 0.4 s
EIGSH_TOL = 1e-10
SINGULAR_PIVOT = 1e-9  # relative; a 16,383-node ring's 4 I - L (not singular) has ~1e-4
LANCZOS_MAXITER = 3000


def second_modulus(Pi: Matrix, symmetric: bool, gossip: bool) -> float:
    """|lambda_2| of Pi (0 for n < 2). ``symmetric``: Pi = Pi^T; ``gossip``: moreover
    non-negative with unit row sums (then the solvers above that rely on it are used)."""
    n = Pi.shape[0]
    if n < 2:
        return 0.0
    if n <= DENSE_EIG_MAX_N:
        dense = as_dense(Pi)
        eig = np.linalg.eigvalsh((dense + dense.T) / 2) if symmetric else np.linalg.eigvals(dense)
        return float(np.sort(np.abs(eig))[-2])
    csr = as_csr(Pi)
    if not (symmetric and gossip):
        return float("nan")
    if banded_lu_is_cheap(csr):
        return _shift_invert_modulus(csr)
    return _lanczos_modulus(csr)


def banded_lu_is_cheap(csr: sp.csr_array) -> bool:
    """Whether a sparse LU of a matrix with Pi's pattern is cheap: n b^2 <= BANDED_MAX_FLOPS,
    or b <= 4 sqrt(n), a grid-like graph, whose minimum-degree LU fills far less than the
    band (65,536-node torus, b = 511: 3 s, where Lanczos took 244 s)."""
    n, b = csr.shape[0], rcm_bandwidth(csr)
    return n * b**2 <= BANDED_MAX_FLOPS or b <= 4 * math.sqrt(n)


def rcm_bandwidth(csr: sp.csr_array) -> int:
    """max |p(i) - p(j)| over the non-zeros (i, j) of a symmetric Pi in reverse
    Cuthill-McKee order p: 2 on a ring, ~2 sqrt(n) on a square torus, ~n/2 on random graphs."""
    order = reverse_cuthill_mckee(csr, symmetric_mode=True)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    coo = csr.tocoo()
    if coo.nnz == 0:
        return 0
    return int(np.abs(position[coo.row] - position[coo.col]).max())


def start_vector(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(n)


def extreme_eigenvalue(
    op: sla.LinearOperator | sp.sparray, which: str = "LA", tol: float = EIGSH_TOL
) -> float:
    """One extreme eigenvalue of a symmetric operator by Lanczos from the fixed start vector:
    the largest (``which="LA"``) or the largest in modulus (``"LM"``). Raises ARPACK's
    ArpackNoConvergence after LANCZOS_MAXITER restarts."""
    eig = sla.eigsh(
        op,
        k=1,
        which=which,
        tol=tol,
        maxiter=LANCZOS_MAXITER,
        v0=start_vector(op.shape[0]),
        return_eigenvectors=False,
    )
    return float(eig[0])


def _top(op: sla.LinearOperator | sp.csr_array) -> float:
    """Largest algebraic eigenvalue of a symmetric operator (NaN if ARPACK fails)."""
    try:
        return extreme_eigenvalue(op)
    except sla.ArpackNoConvergence:
        return float("nan")


def nonsingular_lu(M: sp.sparray) -> sla.SuperLU | None:
    """Sparse LU of M, or None when M is singular: SuperLU says so, or a pivot is below
    SINGULAR_PIVOT times the largest |M_ij| (rounding keeps an exactly singular M from
    always giving an exact zero pivot: the 4 x 4 torus's 8 I - L gave 7e-16)."""
    try:
        lu = sla.splu(sp.csc_array(M), permc_spec="MMD_AT_PLUS_A")
    except RuntimeError:  # "Factor is exactly singular"
        return None
    if np.abs(lu.U.diagonal()).min() <= SINGULAR_PIVOT * abs(M).max():
        return None
    return lu


def _inverse_on_mean_zero(M: sp.csr_array, grounded: bool) -> sla.LinearOperator | None:
    """x -> M^-1 x (or, ``grounded``, L^+ x for a Laplacian M = L, solving with row and column
    0 removed and projecting out 1 before and after); None when the LU finds M singular."""
    n = M.shape[0]
    system = M[1:, 1:] if grounded else M
    lu = nonsingular_lu(system)
    if lu is None:
        return None

    def solve(b: np.ndarray) -> np.ndarray:
        b = np.ravel(b)
        if not grounded:
            return lu.solve(b)
        x = np.zeros(n)
        x[1:] = lu.solve(b[1:] - b.mean())
        return x - x.mean()

    return sla.LinearOperator((n, n), matvec=solve, dtype=np.float64)


def _shift_invert_modulus(Pi: sp.csr_array) -> float:
    """max(lambda_top, -lambda_min) from the smallest non-zero eigenvalue of I - Pi and, if
    needed, the smallest of I + Pi, each as 1 / (top eigenvalue of the inverse)."""
    eye = sp.eye_array(Pi.shape[0], format="csr")
    l_pinv = _inverse_on_mean_zero(eye - Pi, grounded=True)
    if l_pinv is None:  # the grounded Laplacian is singular: Pi is disconnected
        return 1.0
    top_gap = 1.0 / _top(l_pinv)  # 1 - lambda_top
    if np.isnan(top_gap):
        return float("nan")
    if 2.0 * Pi.diagonal().min() >= top_gap:  # 1 + lambda_min >= 2 min_i Pi_ii >= top gap
        return 1.0 - top_gap
    m_inv = _inverse_on_mean_zero(eye + Pi, grounded=False)
    bottom_gap = 0.0 if m_inv is None else 1.0 / _top(m_inv)  # 1 + lambda_min
    if np.isnan(bottom_gap):
        return float("nan")
    return 1.0 - min(top_gap, bottom_gap)


def _lanczos_modulus(Pi: sp.csr_array) -> float:
    """|lambda_2| = the largest |eigenvalue| of Pi - 1 1^T / n (the ones vector deflated)."""
    n = Pi.shape[0]

    def deflated(x: np.ndarray) -> np.ndarray:
        x = x.reshape(n, -1)
        return (Pi @ x - x.mean(axis=0)).reshape(n, -1)

    op = sla.LinearOperator((n, n), matvec=deflated, matmat=deflated, dtype=np.float64)
    try:
        return abs(extreme_eigenvalue(op, which="LM"))
    except sla.ArpackNoConvergence:
        return float("nan")
