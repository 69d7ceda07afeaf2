"""RoLoRA: train and exchange one factor at a time, alternating B and A round by round.

Round 1 trains B (B starts at zero, so A would get no gradient), round 2 A, and so on; the
other factor is frozen that round and not sent, which halves the traffic. ``rolora`` averages
the trained factor on a server: the frozen one is the same on every node (the shared start,
then the server's broadcast), so the mean factor times it is exactly the mean update and
aggregation has no interference. ``drolora`` gossips on the graph: the trained factor only
(``algorithm.rolora_mix: trained``), or both (``both``, ADF-LoRA style); there the frozen
factor drifts apart between nodes. The interference is logged as for dlora, from what
arrives: with ``trained`` the messages lack the neighbours' frozen factors, so it reads 0
(the gap sum_j w_j B_j A_j - B_bar A_i that their drift causes is not visible to the node).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from decaf_ray.algorithms.base import Adapter
from decaf_ray.algorithms.dlora import DLoRA
from decaf_ray.algorithms.fedavg import FedAvg

if TYPE_CHECKING:
    from decaf_ray.config import AlgorithmConfig


def trained_in(round_idx: int) -> str:
    return "B" if round_idx % 2 == 1 else "A"


def _only(adapter: Adapter, factor: str) -> Adapter:
    return Adapter(
        A=adapter.A if factor == "A" else {},
        B=adapter.B if factor == "B" else {},
        extra=adapter.extra,
    )


class RoLoRA(FedAvg):
    name = "rolora"
    message_period = 2  # B in odd rounds, A in even ones

    def trained_factors(self, round_idx: int) -> tuple[str, ...]:
        return (trained_in(round_idx),)

    def message_in_round(self, adapter: Adapter, round_idx: int) -> Adapter:
        return _only(adapter, trained_in(round_idx))

    def server_interference(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> float:
        return 0.0  # the frozen factor is one and the same on every node: the mean is exact


class DRoLoRA(DLoRA):
    name = "drolora"
    message_period = 2

    def __init__(self, mix: str = "trained") -> None:
        self.mix = mix

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> DRoLoRA:
        return cls(mix=cfg.rolora_mix)

    def trained_factors(self, round_idx: int) -> tuple[str, ...]:
        return (trained_in(round_idx),)

    def message_in_round(self, adapter: Adapter, round_idx: int) -> Adapter:
        return adapter if self.mix == "both" else _only(adapter, trained_in(round_idx))
