"""Network-wide quantities of a set of node adapters (pure numpy; sums over LoRA modules).

- ``product_consensus``: (1/n) sum_i ||B_i A_i - mean_j B_j A_j||_F^2, summed over modules
- ``factor_consensus_A`` / ``_B``: the same for each factor separately
- ``network_average``: the model whose update is the exact mean of the nodes' products,
  written as one wide adapter: B = [B_1 .. B_n] / n (d, n r), A = [A_1; ..; A_n] (n r, k).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decaf_ray.algorithms.base import Adapter
from decaf_ray.algorithms.stacking import stack_part
from decaf_ray.math.stacked import factor_consensus_stacked, product_consensus_stacked


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


def network_average(adapters: Sequence[Adapter]) -> Adapter:
    """Exact average model: mean of products as a rank-(n r) adapter, mean of extra tensors."""
    n = len(adapters)
    mods = adapters[0].modules
    return Adapter(
        A={m: np.concatenate([a.A[m] for a in adapters], axis=0) for m in mods},
        B={m: np.concatenate([a.B[m] for a in adapters], axis=1) / n for m in mods},
        extra={k: np.mean([a.extra[k] for a in adapters], axis=0) for k in adapters[0].extra},
    )
