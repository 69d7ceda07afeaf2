"""FedSA-LoRA: A is shared (averaged), B stays private to its node.

A carries what all nodes have in common and B what is their own, so only A (and the head)
travels: ``fedsa_lora`` averages them on a server, ``dfedsa_lora`` gossips them on the graph.
Each node keeps its own B, so node models differ by design (evaluate them on their own data
too: ``eval.on: both``), and bytes sent count A and the head only.
"""

from __future__ import annotations

from decaf_ray.algorithms.base import Adapter, Algorithm, Inbox, mix_adapters
from decaf_ray.algorithms.fedavg import FedAvg


def _shared(adapter: Adapter) -> Adapter:
    return Adapter(A=adapter.A, B={}, extra=adapter.extra)


class FedSALoRA(FedAvg):
    name = "fedsa_lora"

    def message(self, adapter: Adapter) -> Adapter:
        return _shared(adapter)

    def server_interference(self, messages, sizes) -> None:
        return None  # B is never averaged: there is no shared product to compare

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        return mix_adapters(inbox, own, parts=("A", "extra")), {}


class DFedSALoRA(Algorithm):
    name = "dfedsa_lora"

    def message(self, adapter: Adapter) -> Adapter:
        return _shared(adapter)

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        return mix_adapters(inbox, own, parts=("A", "extra")), {}
