"""FlexLoRA: the server averages the products and sends back their truncated SVD.

The federated twin of decaf: the server forms P = sum_j p_j B_j A_j (p_j by shard size) and
each client takes TSVD_r(P), split into B and A, in place of its factors. The server's
computation is decaf's own combine with the server's weights (factored, never the d x k
product). What the truncation loses, sqrt(sum_{k>r} sigma_k^2), is logged as the server's
``interference`` (per module, summed over modules): the distance between the exact mean
update and what the clients get.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from decaf_ray.algorithms.base import Adapter, Inbox, mix_adapters, widest
from decaf_ray.algorithms.decaf import DeCAF
from decaf_ray.algorithms.fedavg import FedAvg


class FlexLoRA(FedAvg):
    name = "flexlora"

    def __init__(self) -> None:
        self._tsvd = DeCAF()

    def _weighted(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> Inbox:
        total = float(sum(sizes))
        return [(s / total, m) for s, m in zip(sizes, messages)]

    def aggregate(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> Adapter:
        # at the largest rank; each client keeps its first r_i components: TSVD_{r_i}(P)
        return self._tsvd.combine(widest(messages), self._weighted(messages, sizes))[0]

    def server_interference(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> float:
        """Each module's truncation error ||P - TSVD_r(P)||_F, summed over modules as every
        method's ``interference`` is (not one norm over all modules together)."""
        inbox, top = self._weighted(messages, sizes), widest(messages)
        total = 0.0
        for m in top.modules:
            _, stats = self._tsvd.combine(_module(top, m), [(w, _module(a, m)) for w, a in inbox])
            total += math.sqrt(stats["tsvd_tail"])
        return total

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        return mix_adapters(inbox, own), {}


def _module(adapter: Adapter, m: str) -> Adapter:
    """Module ``m``'s factors alone."""
    return Adapter(A={m: adapter.A[m]}, B={m: adapter.B[m]})
