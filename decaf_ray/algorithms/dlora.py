"""Decentralized LoRA: gossip A and B separately, A_i <- sum_j Pi_ij A_j, B_i likewise.

The product this ends at, B_bar A_bar, differs from the neighbourhood's mean update
P_i = sum_j Pi_ij B_j A_j by the interference term, which is logged.
"""

from __future__ import annotations

from collections.abc import Sequence

from decaf_ray.algorithms.base import Adapter, Algorithm, Inbox, mix_adapters
from decaf_ray.algorithms.stacking import factor_average_all, interference


class DLoRA(Algorithm):
    """Factor averaging with its interference logged; the base of the methods that gossip
    factors this way (dlora_fa, drolora)."""

    name = "dlora"

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        return mix_adapters(inbox, own), {"interference": interference(inbox, own)}

    def combine_all(
        self, owns: Sequence[Adapter], inboxes: Sequence[Inbox]
    ) -> list[tuple[Adapter, dict[str, float]]]:
        return factor_average_all(owns, inboxes)  # batched over the host's nodes
