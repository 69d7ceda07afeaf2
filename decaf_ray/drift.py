"""Drift of the network average across one combine (pure numpy; sums over LoRA modules).

With X_i^- a node's state after its local steps and X_i^+ after combining (a node that did not
combine has X_i^+ = X_i^-), the drift of factor F in {A, B} is

    drift_F = sum_m || (1/n) sum_i F_i^+[m] - (1/n) sum_i F_i^-[m] ||_F

and ``drift_product`` is the same for the products B_i A_i, computed from the factors:
||(1/n) sum_i (B_i^+ A_i^+ - B_i^- A_i^-)||_F^2 = tr(G_B G_A) with G_B = Bc^T Bc,
G_A = Ac Ac^T, Bc = [B^+_i - B^-_i .., B^-_i ..] / n, Ac = [A^+_i; ..; A^+_i - A^-_i; ..].
A doubly stochastic Pi keeps the factor averages of dLoRA fixed (drift 0 up to rounding);
renormalised weights after losses or stale inboxes do not, and the drift measures by how much.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decaf_ray.algorithms.base import Adapter
from decaf_ray.math import lowrank_sq_norm


def average_drift(before: Sequence[Adapter], after: Sequence[Adapter]) -> dict[str, float]:
    """drift_A, drift_B and drift_product between two lists of the n nodes' adapters."""
    n = len(before)
    out = {"drift_A": 0.0, "drift_B": 0.0, "drift_product": 0.0}
    for m in before[0].modules:
        for name in ("A", "B"):
            mean_b = np.mean([getattr(a, name)[m].astype(np.float64) for a in before], axis=0)
            mean_a = np.mean([getattr(a, name)[m].astype(np.float64) for a in after], axis=0)
            out[f"drift_{name}"] += float(np.linalg.norm(mean_a - mean_b))
        # B+A+ - B-A- = (B+ - B-) A+ + B- (A+ - A-): exactly 0 where a node did not change
        Bc = (
            np.concatenate(
                [a.B[m].astype(np.float64) - b.B[m] for a, b in zip(after, before)]
                + [b.B[m].astype(np.float64) for b in before],
                axis=1,
            )
            / n
        )  # (d, 2 n r)
        Ac = np.concatenate(
            [a.A[m].astype(np.float64) for a in after]
            + [a.A[m].astype(np.float64) - b.A[m] for a, b in zip(after, before)],
            axis=0,
        )  # (2 n r, k)
        out["drift_product"] += float(np.sqrt(lowrank_sq_norm([Bc], [Ac])))
    return out
