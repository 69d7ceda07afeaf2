"""FedIT: a server averages A and B separately, weighted by shard size, and broadcasts.

The upper baseline. Its server is the one place where every adapter meets; the engine runs
:meth:`aggregate` on the driver and hands every node the result as its only message.
"""

from __future__ import annotations

from collections.abc import Sequence

from decaf_ray.algorithms.base import Adapter, Algorithm, Inbox, mix_adapters, widest
from decaf_ray.algorithms.stacking import interference


class FedAvg(Algorithm):
    name = "fedavg"
    uses_server = True

    def aggregate(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> Adapter:
        total = float(sum(sizes))
        inbox = [(s / total, m) for s, m in zip(sizes, messages)]
        return mix_adapters(inbox, widest(messages))  # of mixed ranks: the largest

    def server_interference(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> float:
        total = float(sum(sizes))
        return interference([(s / total, m) for s, m in zip(sizes, messages)], messages[0])

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        return mix_adapters(inbox, own), {}
