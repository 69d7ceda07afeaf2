"""dLoRA with frozen A: A is identical on every node and never trained; only B travels.

With a shared A the product average is exact (B_bar A = sum_j Pi_ij B_j A), so there is no
interference, at the price of a frozen half of the adapter. Traffic is halved.
"""

from __future__ import annotations

from decaf_ray.algorithms.base import Adapter
from decaf_ray.algorithms.dlora import DLoRA


class DLoRAFA(DLoRA):
    name = "dlora_fa"
    trains_A = False

    def message(self, adapter: Adapter) -> Adapter:
        return Adapter(A={}, B=adapter.B, extra=adapter.extra)
