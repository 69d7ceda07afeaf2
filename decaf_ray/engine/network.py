"""Network-wide quantities of the n nodes' adapters (sums over LoRA modules), on the driver.

- ``product_consensus``: (1/n) sum_i ||B_i A_i - mean_j B_j A_j||_F^2
- ``factor_consensus_A`` / ``_B``: the same for each factor separately
- drift across one combine: with X_i^- a node's state after its local steps and X_i^+ after
  combining (X_i^+ = X_i^- for a node that did not combine),
  ``drift_F = sum_m || (1/n) sum_i F_i^+[m] - (1/n) sum_i F_i^-[m] ||_F`` for F in {A, B}, and
  ``drift_product`` the same for the products B_i A_i, from the factors:
  ||(1/n) sum_i (B_i^+ A_i^+ - B_i^- A_i^-)||_F^2 = tr(G_B G_A) with G_B = Bc^T Bc,
  G_A = Ac Ac^T, Bc = [B^+_i - B^-_i .., B^-_i ..] / n, Ac = [A^+_i; ..; A^+_i - A^-_i; ..].
  A doubly stochastic Pi keeps the factor averages of dLoRA fixed (drift 0 up to rounding);
  renormalised weights after losses or stale inboxes do not, and the drift measures by how much.
- ``network_average``: the model whose update is the exact mean of the nodes' products,
  written as one wide adapter: B = [B_1 .. B_n] / n (d, n r), A = [A_1; ..; A_n] (n r, k).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decaf_ray.algorithms.base import Adapter
from decaf_ray.algorithms.stacking import stack_part
from decaf_ray.math.stacked import (
    drift_stacked,
    factor_consensus_stacked,
    product_consensus_stacked,
)


def consensus_metrics(adapters: Sequence[Adapter]) -> dict[str, float]:
    """Consensus errors of the product and of each factor, summed over modules."""
    out = {"product_consensus": 0.0, "factor_consensus_A": 0.0, "factor_consensus_B": 0.0}
    for m in adapters[0].modules:  # one module at a time: stacks of n nodes are big enough
        B = stack_part(adapters, [m], "B")  # (1, n, d, r)
        A = stack_part(adapters, [m], "A")  # (1, n, r, k)
        out["product_consensus"] += float(product_consensus_stacked(B, A).sum())
        out["factor_consensus_A"] += float(factor_consensus_stacked(A.flatten(-2)).sum())
        out["factor_consensus_B"] += float(factor_consensus_stacked(B.flatten(-2)).sum())
    return out


def average_drift(before: Sequence[Adapter], after: Sequence[Adapter]) -> dict[str, float]:
    """drift_A, drift_B and drift_product between two lists of the n nodes' adapters."""
    out = {"drift_A": 0.0, "drift_B": 0.0, "drift_product": 0.0}
    for m in before[0].modules:  # one module at a time: the (d, 2 n r) stack grows with n
        parts = [stack_part(side, [m], name) for side in (before, after) for name in ("B", "A")]
        for key, value in drift_stacked(*parts).items():
            out[key] += float(value.sum())
    return out


def network_average(adapters: Sequence[Adapter]) -> Adapter:
    """Exact average model: mean of products as a rank-(n r) adapter, mean of extra tensors."""
    n = len(adapters)
    mods = adapters[0].modules
    return Adapter(
        A={m: np.concatenate([a.A[m] for a in adapters], axis=0) for m in mods},
        B={m: np.concatenate([a.B[m] for a in adapters], axis=1) / n for m in mods},
        extra={k: np.mean([a.extra[k] for a in adapters], axis=0) for k in adapters[0].extra},
    )
