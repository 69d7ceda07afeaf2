"""FFA-LoRA: A frozen at its shared initial value, B trained; a server averages B.

The federated twin of ``dlora_fa``: with every node's A identical (``model.same_init``, the
default) the server's mean of B gives exactly the mean update, B_bar A = sum_j p_j B_j A, so
aggregation has no interference, and half the adapter travels.
"""

from __future__ import annotations

from collections.abc import Sequence

from decaf_ray.algorithms.base import Adapter
from decaf_ray.algorithms.fedavg import FedAvg


class FFALoRA(FedAvg):
    name = "ffa_lora"
    trains_A = False

    def message(self, adapter: Adapter) -> Adapter:
        return Adapter(A={}, B=adapter.B, extra=adapter.extra)

    def server_interference(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> float:
        return 0.0  # the A every node multiplies by is one and the same: the mean is exact
