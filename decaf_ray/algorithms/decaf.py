"""DeCAF: consensus on the product, then factorization.

Each node forms P_i = sum_j Pi_ij B_j A_j from its neighbours' factors and keeps its best
rank-r approximation, TSVD_r(P_i) = U S Vh, split back into B and A (balanced or all in B).
By Eckart-Young its error sqrt(sum_{k>r} sigma_k^2), logged as ``tsvd_tail``, is never larger
than dLoRA's interference. The TSVD is computed from the factors (QR + small SVD), never from
the d x k product, for all modules of one shape in one batched call. Non-LoRA tensors (the
head) are averaged plainly.

B and A are defined only up to B G, G^-1 A. With ``align`` the split is turned by the
orthogonal Q (r x r) that brings it closest to the node's own factors before combining
(B Q, Q^T A: the same product), so that a new rotation or sign of the singular vectors each
round does not scramble the coordinates AdamW's moments refer to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from decaf_ray.algorithms.base import Adapter, Algorithm, Inbox, mix_adapters
from decaf_ray.algorithms.stacking import concat_factors, inbox_weights, shape_groups, stack_part
from decaf_ray.math import mix
from decaf_ray.math.stacked import align_stacked, split_stacked, tsvd_and_interference_stacked

if TYPE_CHECKING:
    from decaf_ray.config import AlgorithmConfig


class DeCAF(Algorithm):
    name = "decaf"

    def __init__(
        self, sv_split: str = "balanced", reset_moments: bool = False, align: bool = False
    ) -> None:
        self.sv_split = sv_split
        self.resets_moments = reset_moments
        self.align = align

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> DeCAF:
        return cls(sv_split=cfg.sv_split, reset_moments=cfg.reset_moments, align=cfg.align)

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        extra = mix_adapters(inbox, own, parts=("extra",)).extra
        w, msgs = inbox_weights(inbox)
        w_np = w.numpy()
        A, B = {}, {}
        stats = {"interference": 0.0, "tsvd_tail": 0.0, "top_singular_value": 0.0}
        for mods in shape_groups(own) if msgs else []:
            B_cat, A_cat = concat_factors(msgs, mods, w_np)  # (M, d, m r), (M, m r, k)
            rank = own.A[mods[0]].shape[0]
            U, S, Vh, s, gap = tsvd_and_interference_stacked(B_cat, A_cat, w, rank)
            B_new, A_new = split_stacked(U, S, Vh, self.sv_split)  # (M, d, r), (M, r, k)
            if self.align:  # the same products, turned towards the node's own factors
                B_own = stack_part([own], mods, "B")[:, 0]  # (M, d, r)
                A_own = stack_part([own], mods, "A")[:, 0]  # (M, r, k)
                B_new, A_new = align_stacked(B_new, A_new, B_own, A_own)
            B_new, A_new = B_new.numpy(), A_new.numpy()
            zero = ~(S > 0).any(dim=-1)  # (M,)
            stats["interference"] += float(gap.sum())
            stats["tsvd_tail"] += float(s[~zero, rank:].square().sum())
            stats["top_singular_value"] = max(stats["top_singular_value"], float(S[:, 0].max()))
            for idx, m in enumerate(mods):
                if zero[idx]:
                    # Pitfall guard: a zero product (B = 0 everywhere, e.g. before any local
                    # step) would give zero factors that never train again; keep the average.
                    B[m] = mix(w_np, [msg.B[m] for msg in msgs])
                    A[m] = mix(w_np, [msg.A[m] for msg in msgs])
                    continue
                B[m] = B_new[idx].astype(own.B[m].dtype)
                A[m] = A_new[idx].astype(own.A[m].dtype)
        for m in own.modules:  # an inbox with no weight at all: keep the node's own factors
            A.setdefault(m, own.A[m])
            B.setdefault(m, own.B[m])
        return Adapter(A=A, B=B, extra=extra), stats
