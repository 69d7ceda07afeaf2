"""DeCAF: consensus on the product, then factorization.

Each node forms P_i = sum_j Pi_ij B_j A_j from its neighbours' factors and keeps its best
rank-r approximation, TSVD_r(P_i) = U S Vh, split back into B and A (balanced or all in B).
By Eckart-Young its error sqrt(sum_{k>r} sigma_k^2), logged as ``tsvd_tail``, is never larger
than dLoRA's interference. The TSVD is computed from the factors (QR + small SVD), never from
the d x k product. Non-LoRA tensors (the head) are averaged plainly.
"""

from __future__ import annotations

import numpy as np

from decaf_ray.algorithms.base import Adapter, Algorithm, Inbox, interference, mix_adapters
from decaf_ray.math import split_factors, tsvd_factored


class DeCAF(Algorithm):
    name = "decaf"

    def __init__(self, sv_split: str = "balanced", reset_moments: bool = False) -> None:
        self.sv_split = sv_split
        self.resets_moments = reset_moments

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        mixed = mix_adapters(inbox, own)  # the head; A and B are replaced below
        w = [wj for wj, _ in inbox]
        A, B = {}, {}
        tail, top_sv = 0.0, 0.0
        for m in own.modules:
            r = own.A[m].shape[0]
            Bs = [msg.B[m] for _, msg in inbox]
            As = [msg.A[m] for _, msg in inbox]
            t = tsvd_factored(Bs, As, w, rank=r)
            if not np.any(t.S > 0):
                # Pitfall guard: a zero product (B = 0 everywhere, e.g. before any local step)
                # would give zero factors that never train again; keep the factor average.
                A[m], B[m] = mixed.A[m], mixed.B[m]
                continue
            B[m], A[m] = split_factors(t, self.sv_split)
            tail += float(t.tail_energy)
            top_sv = max(top_sv, float(t.S[0]))
        stats = {
            "interference": interference(inbox, own),
            "tsvd_tail": tail,
            "top_singular_value": top_sv,
        }
        return Adapter(A=A, B=B, extra=mixed.extra), stats
