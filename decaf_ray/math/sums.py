"""Network metrics as sums over nodes: each host sums its own nodes, the driver adds the few
small partial sums, and no node's adapter has to cross to the driver.

With a reference pair (B_0, A_0) that every host shares (node 0's state) and the shifted
products X_i = B_i A_i - B_0 A_0 = dB_i A_i + B_0 dA_i (dB_i = B_i - B_0, dA_i = A_i - A_0),
every network metric of one module is a function of sums over the n nodes:

    product_consensus  = sum_i ||X_i||^2 / n - ||sum_i X_i||^2 / n^2
    factor_consensus_F = sum_i ||dF_i||^2 / n - ||sum_i dF_i||^2 / n^2        (F = A, B)
    drift_F            = ||sum_i (F+_i - F-_i)||_F / n
    drift_product      = ||sum_i ((B+_i - B-_i) A+_i + B-_i (A+_i - A-_i))||_F / n
    network average    = B_0 A_0 + sum_i X_i / n

(F- a node's state after its local steps, F+ after combining.) The shift keeps the squared
terms small near consensus, so their difference does not cancel catastrophically; it is
exactly 0 for nodes equal to node 0. A sum that is multiplied out (below) is taken unshifted,
as one GEMM sum_i B_i A_i from which m B_0 A_0 (or, for the drift, the same GEMM of the states
before) is subtracted: one GEMM fewer than the shifted pairs, and the difference of two dense
d x k sums loses only the rounding of ||P||, not of the squared norms.

A sum of products is a :class:`LowRank`: a dense d x k part plus factors B (d, R) A (R, k).
It stays factored while R (d + k) < d k and is multiplied out once it is wider than the layer,
the rule :func:`~decaf_ray.math.stacked.sq_norm_stacked` uses, so a host sends at most d k
numbers per module and sum, however many nodes it carries, and the driver's memory does not
grow with n. Every array has a leading batch axis M: one entry per module of a shape group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from decaf_ray.math.stacked import sq_norm_stacked, tall, wide

__all__ = ["GroupSums", "LowRank", "group_sums", "group_metrics"]


def _t(x: np.ndarray) -> torch.Tensor:
    """float64 tensor of ``x``; a read-only array (Ray's zero-copy objects) is copied, since
    torch cannot hold one without warning that writes would be undefined."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


@dataclass(frozen=True)
class LowRank:
    """``dense + B @ A`` per batch entry; dense (M, d, k) or None, B (M, d, R), A (M, R, k)."""

    dense: np.ndarray | None
    B: np.ndarray
    A: np.ndarray

    @classmethod
    def of(cls, B: torch.Tensor, A: torch.Tensor) -> LowRank:
        """B A from factors (M, d, R) and (M, R, k), multiplied out if that is smaller."""
        return cls(None, B.numpy(), A.numpy()).compact()

    @classmethod
    def of_pairs(cls, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> LowRank:
        """sum_j B_j A_j of factor pairs (M, d, R_j), (M, R_j, k): :meth:`of` the
        concatenated factors, but multiplied out pair by pair when that is smaller, so the
        wide concatenations are never built."""
        d, k = pairs[0][0].shape[-2], pairs[0][1].shape[-1]
        R = sum(B.shape[-1] for B, _ in pairs)
        if R * (d + k) < d * k:
            return cls.of(
                torch.cat([B for B, _ in pairs], -1), torch.cat([A for _, A in pairs], -2)
            )
        dense = pairs[0][0] @ pairs[0][1]
        for B, A in pairs[1:]:
            dense += B @ A
        *lead, _, _ = dense.shape
        return cls(dense.numpy(), np.zeros((*lead, d, 0)), np.zeros((*lead, 0, k)))

    @property
    def rank(self) -> int:
        return self.B.shape[-1]

    def compact(self) -> LowRank:
        """Multiplied out when the factors are wider than the layer, or a dense part exists."""
        d, R, k = self.B.shape[-2], self.B.shape[-1], self.A.shape[-1]
        if R == 0 or (self.dense is None and R * (d + k) < d * k):
            return self
        dense = (_t(self.B) @ _t(self.A)).numpy()
        if self.dense is not None:
            dense += self.dense
        empty_B, empty_A = self.B[..., :0], self.A[..., :0, :]
        return LowRank(dense, empty_B, empty_A)

    def scaled(self, c: float) -> LowRank:
        dense = None if self.dense is None else c * self.dense
        return LowRank(dense, c * self.B, self.A)

    def __add__(self, other: LowRank) -> LowRank:
        dense = self.dense
        if other.dense is not None:
            dense = other.dense if dense is None else dense + other.dense
        B = np.concatenate([self.B, other.B], axis=-1)
        A = np.concatenate([self.A, other.A], axis=-2)
        return LowRank(dense, B, A).compact()

    def sq_norm(self) -> np.ndarray:
        """||dense + B A||_F^2 per batch entry, (M,)."""
        if self.dense is not None:
            return np.square(self.dense).sum(axis=(-2, -1))
        return sq_norm_stacked(_t(self.B), _t(self.A)).numpy()

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, A) with B A = this sum: the factors, or for a dense part P (d x k) the pair
        (P, I_k) or (I_d, P), whichever has the smaller inner size."""
        if self.dense is None:
            return self.B, self.A
        *lead, d, k = self.dense.shape
        if k <= d:
            return self.dense, np.broadcast_to(np.eye(k), (*lead, k, k)).copy()
        return np.broadcast_to(np.eye(d), (*lead, d, d)).copy(), self.dense


def _add(x: np.ndarray | None, y: np.ndarray | None) -> np.ndarray | None:
    return y if x is None else x if y is None else x + y


@dataclass(frozen=True)
class GroupSums:
    """Sums over some nodes for one shape group of modules (arrays over the group, axis 0).

    ``count`` nodes; ``sq_product`` sum ||X_i||^2 and ``product`` sum X_i; ``sq_A``,
    ``sum_A`` (``_B``) sum ||dA_i||^2 and sum dA_i; ``drift_A``, ``drift_B``,
    ``drift_product`` the sums of the changes across a combine (None: not measured).
    """

    modules: tuple[str, ...]
    count: int
    sq_product: np.ndarray  # (M,)
    product: LowRank  # (M, d, k)
    sq_A: np.ndarray  # (M,)
    sum_A: np.ndarray  # (M, r, k)
    sq_B: np.ndarray  # (M,)
    sum_B: np.ndarray  # (M, d, r)
    drift_A: np.ndarray | None = None  # (M, r, k)
    drift_B: np.ndarray | None = None  # (M, d, r)
    drift_product: LowRank | None = None  # (M, d, k)

    def __add__(self, other: GroupSums) -> GroupSums:
        if other.modules != self.modules:
            raise ValueError(f"cannot add sums of modules {other.modules} to {self.modules}")
        drift = self.drift_product
        if other.drift_product is not None:
            drift = other.drift_product if drift is None else drift + other.drift_product
        return replace(
            self,
            count=self.count + other.count,
            sq_product=self.sq_product + other.sq_product,
            product=self.product + other.product,
            sq_A=self.sq_A + other.sq_A,
            sum_A=self.sum_A + other.sum_A,
            sq_B=self.sq_B + other.sq_B,
            sum_B=self.sum_B + other.sum_B,
            drift_A=_add(self.drift_A, other.drift_A),
            drift_B=_add(self.drift_B, other.drift_B),
            drift_product=drift,
        )


def group_sums(
    modules: Sequence[str],
    B: torch.Tensor,
    A: torch.Tensor,
    B_0: torch.Tensor,
    A_0: torch.Tensor,
    B_before: torch.Tensor | None = None,
    A_before: torch.Tensor | None = None,
) -> GroupSums:
    """The sums over m nodes: B (M, m, d, r), A (M, m, r, k) float64; the reference
    B_0 (M, d, r), A_0 (M, r, k); the states before the combine likewise (or None)."""
    m, (d, r), k = B.shape[-3], B.shape[-2:], A.shape[-1]
    B_0, A_0 = B_0.contiguous(), A_0.contiguous()  # (M, d, r), (M, r, k)
    dB, dA = B - B_0.unsqueeze(-3), A - A_0.unsqueeze(-3)  # (M, m, d, r), (M, m, r, k)
    # ||dB_i A_i + B_0 dA_i||^2 from r x r Grams, without stacking [dB_i, B_0] per node
    sq = (
        ((dB.mT @ dB) * (A @ A.mT)).sum(dim=(-2, -1))
        + 2.0 * ((dB.mT @ B_0.unsqueeze(-3)) * (A @ dA.mT)).sum(dim=(-2, -1))
        + ((B_0.mT @ B_0).unsqueeze(-3) * (dA @ dA.mT)).sum(dim=(-2, -1))
    ).clamp_min(0.0)  # (M, m)
    sum_dA = dA.sum(dim=-3)  # (M, r, k)
    dense = (m + 1) * r * (d + k) >= d * k  # the rule of LowRank.of_pairs for these pairs
    after = wide(B) @ tall(A) if dense else None  # sum_i B_i A_i, (M, d, k)
    drift = {}
    if B_before is not None and A_before is not None:
        drift = _drift(B, A, B_before, A_before, after)
    if dense:  # sum_i X_i = sum_i B_i A_i - m B_0 A_0: one GEMM, shared with the drift
        product = _dense(after.baddbmm_(B_0, A_0, alpha=-float(m)))  # in place: the drift is done
    else:  # sum_i X_i = [dB_1 .. dB_m, B_0] [A_1; ..; A_m; sum_i dA_i], small terms only
        product = LowRank.of_pairs([(wide(dB), tall(A)), (B_0, sum_dA)])
    return GroupSums(
        tuple(modules),
        m,
        sq.sum(dim=-1).numpy(),
        product,
        _sq_sum(dA),
        sum_dA.numpy(),
        _sq_sum(dB),
        dB.sum(dim=-3).numpy(),
        **drift,
    )


def _sq_sum(x: torch.Tensor) -> np.ndarray:
    """sum ||x_i||^2 over axis 1 and the matrix axes of x (M, m, a, b): (M,)."""
    flat = x.reshape(x.shape[0], -1)
    return torch.linalg.vecdot(flat, flat).numpy()


def _dense(x: torch.Tensor) -> LowRank:
    """A LowRank of the dense sums x (M, d, k) with no factors."""
    *lead, d, k = x.shape
    return LowRank(x.numpy(), np.zeros((*lead, d, 0)), np.zeros((*lead, 0, k)))


def _drift(
    B: torch.Tensor,
    A: torch.Tensor,
    B_before: torch.Tensor,
    A_before: torch.Tensor,
    after: torch.Tensor | None,
) -> dict:
    """The drift sums of :class:`GroupSums` between the states before (B-, A-) and after (B+,
    A+) a combine; ``after`` sum_i B+_i A+_i (M, d, k) where the sums are dense, else None."""
    if torch.equal(B, B_before) and torch.equal(A, A_before):  # nothing moved: exactly 0
        (M, _, d, r), k = B.shape, A.shape[-1]
        return {
            "drift_A": np.zeros((M, r, k)),
            "drift_B": np.zeros((M, d, r)),
            "drift_product": LowRank(None, np.zeros((M, d, 0)), np.zeros((M, 0, k))),
        }
    drift_A = (A.sum(dim=-3) - A_before.sum(dim=-3)).numpy()  # n times the change of the
    drift_B = (B.sum(dim=-3) - B_before.sum(dim=-3)).numpy()  # network means, as measured
    if after is not None:  # sum_i B+_i A+_i - sum_i B-_i A-_i: one more GEMM
        drift = torch.baddbmm(after, wide(B_before), tall(A_before), alpha=-1.0)
        return {"drift_A": drift_A, "drift_B": drift_B, "drift_product": _dense(drift)}
    step_B, step_A = B - B_before, A - A_before  # (B+ - B-) A+ + B- (A+ - A-), few terms
    drift_product = LowRank.of_pairs([(wide(step_B), tall(A)), (wide(B_before), tall(step_A))])
    return {"drift_A": drift_A, "drift_B": drift_B, "drift_product": drift_product}


def _spread(sq: np.ndarray, total: np.ndarray, n: int) -> np.ndarray:
    """sum_i ||x_i||^2 / n - ||sum_i x_i||^2 / n^2, clamped at 0, per batch entry."""
    return np.maximum(sq / n - total / n**2, 0.0)


def group_metrics(sums: GroupSums, n: int) -> dict[str, float]:
    """The network metrics of one shape group, summed over its modules, from the sums over
    all n nodes (the driver's share of the work)."""
    out = {
        "product_consensus": _spread(sums.sq_product, sums.product.sq_norm(), n).sum(),
        "factor_consensus_A": _spread(sums.sq_A, np.square(sums.sum_A).sum((-2, -1)), n).sum(),
        "factor_consensus_B": _spread(sums.sq_B, np.square(sums.sum_B).sum((-2, -1)), n).sum(),
    }
    if sums.drift_product is not None:
        out["drift_A"] = np.sqrt(np.square(sums.drift_A / n).sum(axis=(-2, -1))).sum()
        out["drift_B"] = np.sqrt(np.square(sums.drift_B / n).sum(axis=(-2, -1))).sum()
        out["drift_product"] = np.sqrt(sums.drift_product.sq_norm()).sum() / n
    return {k: float(v) for k, v in out.items()}
