"""Decentralized LoRA: gossip A and B separately, A_i <- sum_j Pi_ij A_j, B_i likewise.

The product this ends at, B_bar A_bar, differs from the neighbourhood's mean update
P_i = sum_j Pi_ij B_j A_j by the interference term, which is logged.
"""

from __future__ import annotations

from decaf_ray.algorithms.base import Adapter, Algorithm, Inbox, mix_adapters
from decaf_ray.algorithms.stacking import interference


class DLoRA(Algorithm):
    name = "dlora"

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        return mix_adapters(inbox, own), {"interference": interference(inbox, own)}
