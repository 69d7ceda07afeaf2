"""The factored maths on stacks: many LoRA modules (or nodes) in one batched torch call.

Every function takes float64 torch tensors with any leading batch shape ``...`` (e.g. one entry
per adapted module) and returns tensors over that batch shape. One batched QR or SVD over a
stack of 12 modules costs a fraction of 12 separate numpy calls on small matrices, which is
what a node's combine and the network metrics are made of. The numpy functions of this
package are thin checked wrappers over these.

Shapes: B factors (..., n, d, r), A factors (..., n, r, k); stacked columns B_cat (..., d, R),
rows A_cat (..., R, k) with R = n r.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "align_stacked",
    "drift_stacked",
    "factor_consensus_stacked",
    "interference_cat_stacked",
    "interference_stacked",
    "product_consensus_stacked",
    "split_stacked",
    "sq_norm_stacked",
    "tsvd_and_interference_stacked",
    "tsvd_stacked",
    "wide",
    "tall",
]


def wide(B: Tensor) -> Tensor:
    """(..., n, d, r) -> (..., d, n r): the n factors B_j side by side, [B_1, ..., B_n]."""
    *lead, n, d, r = B.shape
    return B.movedim(-3, -2).reshape(*lead, d, n * r)


def tall(A: Tensor) -> Tensor:
    """(..., n, r, k) -> (..., n r, k): the n factors A_j stacked, [A_1; ...; A_n]."""
    *lead, n, r, k = A.shape
    return A.reshape(*lead, n * r, k)


def sq_norm_stacked(B_cat: Tensor, A_cat: Tensor) -> Tensor:
    """||B_cat A_cat||_F^2 per batch entry; B_cat (..., d, R), A_cat (..., R, k) -> (...).

    As the sum of the elementwise product of the Grams B_cat^T B_cat and A_cat A_cat^T, cost
    O(R^2 (d + k)), clamped at 0; when the stack is wider than the layer (d k <= R (d + k)) the
    product itself is cheaper, O(d R k), and is used instead.
    """
    d, R = B_cat.shape[-2:]
    k = A_cat.shape[-1]
    if R == 0:
        return B_cat.new_zeros(B_cat.shape[:-2])
    if d * k <= R * (d + k):
        P = B_cat @ A_cat  # (..., d, k)
        return (P * P).sum(dim=(-2, -1))
    G = (B_cat.mT @ B_cat) * (A_cat @ A_cat.mT)  # (..., R, R)
    return G.sum(dim=(-2, -1)).clamp_min(0.0)


class _QR(NamedTuple):
    """A reduced QR X = Q R kept as LAPACK's Householder reflectors (Q is never formed)."""

    a: Tensor  # (..., rows, cols): reflectors below the diagonal, R on and above it
    tau: Tensor  # (..., min(rows, cols))
    R: Tensor  # (..., p, cols), p = min(rows, cols)


def _qr(X: Tensor) -> _QR:
    a, tau = torch.geqrf(X)
    return _QR(a, tau, a[..., : min(X.shape[-2:]), :].triu())


def _times_q(qr: _QR, C: Tensor) -> Tensor:
    """Q C for C (..., p, q): Q's reflectors applied to C padded with zero rows (ormqr)."""
    rows, p = qr.a.shape[-2], C.shape[-2]
    padded = C.new_zeros(*C.shape[:-2], rows, C.shape[-1])
    padded[..., :p, :] = C
    return torch.ormqr(qr.a, qr.tau, padded)


def _qr_pair(B_cat: Tensor, A_cat: Tensor) -> tuple[_QR, _QR]:
    """B_cat = Q_B R_B and A_cat^T = Q_A R_A, so B_cat A_cat = Q_B R_B R_A^T Q_A^T."""
    return _qr(B_cat), _qr(A_cat.mT)  # R_B (..., p_B, R), R_A (..., p_A, R)


SEPARATED = 1e-6  # kept singular values above this fraction of the top one: vectors by GEMM


def _truncate(
    qr_B: _QR, qr_A: _QR, rank: int, B_cat: Tensor, A_cat: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rank-``rank`` TSVD from the QR pair via the SVD of the small core R_B R_A^T.

    The singular vectors are U = P V S^-1 = B_cat R_A^T V_c S^-1 and
    Vh = S^-1 U^T P = S^-1 U_c^T R_B A_cat: two GEMMs on the stacks, where applying Q_B and
    Q_A's reflectors (ormqr) costs a LAPACK call per matrix. Their error is about the rounding
    of ||P|| over the smallest kept singular value, so an entry whose kept spectrum falls
    below :data:`SEPARATED` of its top value (a product of lower rank, a zero one) takes the
    reflectors' exactly orthonormal vectors instead."""
    U_c, s, Vh_c = torch.linalg.svd(qr_B.R @ qr_A.R.mT, full_matrices=False)
    q = min(rank, s.shape[-1])
    lead, d, k = qr_B.a.shape[:-2], qr_B.a.shape[-2], qr_A.a.shape[-2]
    S = qr_B.a.new_zeros(*lead, rank)
    S[..., :q] = s[..., :q]
    s_q = s[..., :q]
    far = s_q.clamp_min(torch.finfo(s.dtype).tiny)
    # the S^-1 scales the small R x q factors, so each stack is passed over once, by a GEMM
    U = B_cat @ (qr_A.R.mT @ (Vh_c[..., :q, :].mT / far.unsqueeze(-2)))  # (..., d, q)
    Vh = ((U_c[..., :q] / far.unsqueeze(-2)).mT @ qr_B.R) @ A_cat  # (..., q, k)
    if q < rank:  # zero-padded past the rank of P
        U = torch.cat([U, U.new_zeros(*lead, d, rank - q)], dim=-1)
        Vh = torch.cat([Vh, Vh.new_zeros(*lead, rank - q, k)], dim=-2)
    if q == 0:
        return U, S, Vh, s
    close = s_q[..., -1] <= SEPARATED * s[..., 0]  # (...): tiny or zero kept values
    if bool(close.any()):
        U[close, :, :q] = _times_q(_pick(qr_B, close), U_c[close][..., :q])  # Q_B U_c
        Vh[close, :q, :] = _times_q(_pick(qr_A, close), Vh_c[close][..., :q, :].mT).mT
    return U, S, Vh, s


def _pick(qr: _QR, mask: Tensor) -> _QR:
    """The entries ``mask`` selects of a batched QR."""
    return _QR(qr.a[mask], qr.tau[mask], qr.R[mask])


def tsvd_stacked(B_cat: Tensor, A_cat: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rank-``rank`` TSVD of P = B_cat A_cat per batch entry, without forming P.

    QR of both sides, B_cat = Q_B R_B and A_cat^T = Q_A R_A, then the SVD of the small core
    R_B R_A^T = U_c S V_c^T: U = Q_B U_c, Vh = V_c^T Q_A^T. Cost O((d + k) R^2).

    Returns U (..., d, rank), S (..., rank), Vh (..., rank, k), zero-padded past the rank of
    P, and the whole spectrum s (..., min(d, k, R)) in descending order.
    """
    return _truncate(*_qr_pair(B_cat, A_cat), rank, B_cat, A_cat)


def tsvd_and_interference_stacked(
    B_cat: Tensor, A_cat: Tensor, w: Tensor, rank: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`tsvd_stacked` of P = sum_j w_j B_j A_j plus its interference, from one QR pair.

    B_cat = [w_1 B_1, ..., w_m B_m] (..., d, m r), A_cat = [A_1; ...; A_m] (..., m r, k); ``w``
    (m,), or (N, m) for stacks (N, ..., d, m r) of N nodes with weights of their own. With
    E = [I; ...; I] (m r, r) and W = [w_1 I, ..., w_m I] (r, m r): B_bar = B_cat E and
    A_bar = W A_cat, so P - B_bar A_bar = Q_B R_B (I - E W) R_A^T Q_A^T, and as Q_B, Q_A have
    orthonormal columns, ||P - B_bar A_bar||_F = ||R_B (I - E W) R_A^T||_F: an R x R product,
    accurate to rounding of ||P|| (no squared-norm cancellation), any weights.

    Returns U, S, Vh, s as :func:`tsvd_stacked` and the interference norms (...).
    """
    qr_B, qr_A = _qr_pair(B_cat, A_cat)
    return (*_truncate(qr_B, qr_A, rank, B_cat, A_cat), _gap(qr_B, qr_A, w))


def interference_cat_stacked(B_cat: Tensor, A_cat: Tensor, w: Tensor) -> Tensor:
    """||sum_j w_j B_j A_j - B_bar A_bar||_F from the concatenated stacks of
    :func:`tsvd_and_interference_stacked` (the same arguments but the rank), without the
    truncation: factor averaging's interference for many nodes in one batched QR pair."""
    return _gap(*_qr_pair(B_cat, A_cat), w)


def _gap(qr_B: _QR, qr_A: _QR, w: Tensor) -> Tensor:
    """||R_B (I - E W) R_A^T||_F (see :func:`tsvd_and_interference_stacked`)."""
    R_B, R_A = qr_B.R, qr_A.R
    m, p = w.shape[-1], R_B.shape[-2]
    blocks = R_B.reshape(*R_B.shape[:-1], m, -1)  # (..., p, m, r): R_B's column blocks
    lead = [1] * (blocks.dim() - w.dim() - 1)  # w's leading dims are the stacks' first ones
    wb = w.reshape(*w.shape[:-1], *lead, m, 1)
    centred = blocks - wb * blocks.sum(dim=-2, keepdim=True)  # R_B (I - E W)
    gap = centred.reshape(*R_B.shape[:-2], p, -1) @ R_A.mT  # (..., p_B, p_A)
    return gap.square().sum(dim=(-2, -1)).sqrt()


def split_stacked(U: Tensor, S: Tensor, Vh: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """New factors (B, A) with B A = U diag(S) Vh; U (..., d, q), S (..., q), Vh (..., q, k).

    ``"balanced"``: B = U S^{1/2}, A = S^{1/2} Vh (||B||_F = ||A||_F);
    ``"all_in_B"``: B = U S, A = Vh (orthonormal rows).
    """
    S = S.clamp_min(0.0)
    if mode == "balanced":
        root = S.sqrt()
        return U * root.unsqueeze(-2), root.unsqueeze(-1) * Vh
    if mode == "all_in_B":
        return U * S.unsqueeze(-2), Vh.clone()
    raise ValueError(f"unknown split mode {mode!r}; expected 'balanced' or 'all_in_B'")


def align_stacked(B: Tensor, A: Tensor, B_ref: Tensor, A_ref: Tensor) -> tuple[Tensor, Tensor]:
    """(B Q, Q^T A): the factorization of B A closest to (B_ref, A_ref) among rotations.

    B, B_ref (..., d, r) and A, A_ref (..., r, k). B A = (B G)(G^-1 A) for any invertible r x r
    G; over orthogonal Q this picks argmin ||B Q - B_ref||_F^2 + ||Q^T A - A_ref||_F^2, an
    orthogonal Procrustes problem: both terms reduce to -2 tr(Q^T M) with
    M = B^T B_ref + A A_ref^T (..., r, r), and with M = P Sigma R^T the optimum is Q = P R^T.
    Q Q^T = I, so the product is B A to rounding. Cost O((d + k) r^2); no d x k product.
    """
    M = B.mT @ B_ref + A @ A_ref.mT  # (..., r, r)
    P, _, Rh = torch.linalg.svd(M)  # P (..., r, r), Rh = R^T (..., r, r)
    Q = P @ Rh  # (..., r, r), orthogonal
    return B @ Q, Q.mT @ A


def interference_stacked(B: Tensor, A: Tensor, w: Tensor) -> Tensor:
    """||sum_j w_j B_j A_j - B_bar A_bar||_F per batch entry; B (..., m, d, r), A (..., m, r, k).

    B_bar = sum_j w_j B_j, A_bar likewise; ``w`` (m,) with no zero entries. Taken relative to
    the first pair so it stays accurate when small (see ``interference_norm``):
    P - B_bar A_bar = sum_j w_j dB_j dA_j - dB dA + (1 - s)(B_0 dA + B_bar A_0), s = sum_j w_j.
    """
    wv = w.reshape(-1, 1, 1)
    B_0, A_0 = B[..., 0, :, :], A[..., 0, :, :]
    dB, dA = B - B_0.unsqueeze(-3), A - A_0.unsqueeze(-3)
    dB_bar, dA_bar = (wv * dB).sum(dim=-3), (wv * dA).sum(dim=-3)  # (..., d, r), (..., r, k)
    Bs, As = [wide(wv * dB), -dB_bar], [tall(dA), dA_bar]
    s = float(w.sum())
    if s != 1.0:
        Bs += [(1.0 - s) * B_0, (1.0 - s) * (wv * B).sum(dim=-3)]
        As += [dA_bar, A_0]
    return sq_norm_stacked(torch.cat(Bs, dim=-1), torch.cat(As, dim=-2)).sqrt()


def product_consensus_stacked(B: Tensor, A: Tensor) -> Tensor:
    """(1/n) sum_i ||B_i A_i - mean_j B_j A_j||_F^2 per batch entry; B (..., n, d, r).

    With the shift X_i = B_i A_i - B_0 A_0 = [dB_i, B_0] [A_i; dA_i] (exactly 0 for nodes equal
    to node 0): mean_i ||X_i||^2 - ||mean_i X_i||^2, clamped at 0.
    """
    n = B.shape[-3]
    B_0, A_0 = B[..., :1, :, :], A[..., :1, :, :]
    dB, dA = B - B_0, A - A_0
    # ||dB_i A_i + B_0 dA_i||^2 from r x r Grams, without stacking [dB_i, B_0] per node
    sq = (
        ((dB.mT @ dB) * (A @ A.mT)).sum(dim=(-2, -1))
        + 2.0 * ((dB.mT @ B_0) * (A @ dA.mT)).sum(dim=(-2, -1))
        + ((B_0.mT @ B_0) * (dA @ dA.mT)).sum(dim=(-2, -1))
    )  # (..., n)
    mean_sq = sq.clamp_min(0.0).mean(dim=-1)
    sq_of_mean = sq_norm_stacked(
        torch.cat([wide(dB / n), B_0[..., 0, :, :]], dim=-1),
        torch.cat([tall(A), dA.mean(dim=-3)], dim=-2),
    )
    return (mean_sq - sq_of_mean).clamp_min(0.0)


def factor_consensus_stacked(X: Tensor) -> Tensor:
    """(1/n) sum_i ||X_i - mean_j X_j||_F^2 per batch entry; X (..., n, f) (flattened factors).

    Deviations are taken from X_0 first, so identical factors give exactly 0.
    """
    D = X - X[..., :1, :]
    centred = D - D.mean(dim=-2, keepdim=True)
    return (centred * centred).sum(dim=(-2, -1)) / X.shape[-2]


def drift_stacked(
    B_before: Tensor, A_before: Tensor, B_after: Tensor, A_after: Tensor
) -> dict[str, Tensor]:
    """Norms of the change of the network means of A, B and B A per batch entry.

    Factors (..., n, d, r) and (..., n, r, k). The product's change is
    (1/n) sum_i (B+_i - B-_i) A+_i + B-_i (A+_i - A-_i), exactly 0 where nothing changed.
    """
    n = B_before.shape[-3]
    out = {
        "drift_A": (A_after.mean(dim=-3) - A_before.mean(dim=-3)).square().sum((-2, -1)).sqrt(),
        "drift_B": (B_after.mean(dim=-3) - B_before.mean(dim=-3)).square().sum((-2, -1)).sqrt(),
    }
    Bc = torch.cat([wide(B_after - B_before), wide(B_before)], dim=-1) / n  # (..., d, 2 n r)
    Ac = torch.cat([tall(A_after), tall(A_after - A_before)], dim=-2)  # (..., 2 n r, k)
    out["drift_product"] = sq_norm_stacked(Bc, Ac).sqrt()
    return out
