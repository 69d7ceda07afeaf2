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
from decaf_ray.math import factor_consensus_error, product_consensus_error


def consensus_metrics(adapters: Sequence[Adapter]) -> dict[str, float]:
    """Consensus errors of the product and of each factor, summed over modules."""
    mods = adapters[0].modules
    out = {"product_consensus": 0.0, "factor_consensus_A": 0.0, "factor_consensus_B": 0.0}
    for m in mods:
        Bs = [a.B[m] for a in adapters]
        As = [a.A[m] for a in adapters]
        out["product_consensus"] += product_consensus_error(Bs, As)
        out["factor_consensus_A"] += factor_consensus_error(As)
        out["factor_consensus_B"] += factor_consensus_error(Bs)
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
