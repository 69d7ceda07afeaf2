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

from decaf_ray.algorithms.base import Adapter
from decaf_ray.algorithms.stacking import stack_part
from decaf_ray.math.stacked import drift_stacked


def average_drift(before: Sequence[Adapter], after: Sequence[Adapter]) -> dict[str, float]:
    """drift_A, drift_B and drift_product between two lists of the n nodes' adapters."""
    out = {"drift_A": 0.0, "drift_B": 0.0, "drift_product": 0.0}
    for m in before[0].modules:  # one module at a time: the (d, 2 n r) stack grows with n
        parts = [stack_part(side, [m], name) for side in (before, after) for name in ("B", "A")]
        for key, value in drift_stacked(*parts).items():
            out[key] += float(value.sum())
    return out
