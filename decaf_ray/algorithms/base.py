"""What every algorithm shares: the adapter message and the two hooks the engine calls.

An algorithm is pure numpy. The engine asks it what a node sends (:meth:`Algorithm.message`)
and how a node combines what arrived (:meth:`Algorithm.combine`); a server-based algorithm also
says how the server aggregates (:meth:`Algorithm.aggregate`). Nothing here knows about Ray,
hosts or schedules, so the same code serves synchronous and asynchronous runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from decaf_ray.math import mix

if TYPE_CHECKING:
    from decaf_ray.config import AlgorithmConfig


@dataclass(frozen=True)
class Adapter:
    """One node's trainable state, or the part of it that travels.

    A[m]: (r, k) and B[m]: (d, r) per adapted module m; ``extra`` holds the other trainable
    tensors (the classification head), which every decentralized method averages plainly.
    """

    A: dict[str, np.ndarray]
    B: dict[str, np.ndarray]
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for part in (self.A, self.B, self.extra) for x in part.values())

    @property
    def modules(self) -> list[str]:
        return list(self.B)


def pack_adapter(adapter: Adapter, codec: str, fraction: float = 0.1, block: int = 0) -> Adapter:
    """``adapter`` with every tensor packed by ``codec`` (its ``nbytes``: what travels)."""
    from decaf_ray.math.compress import pack

    def part(d: dict) -> dict:
        return {k: pack(v, codec, fraction, block) for k, v in d.items()}

    return Adapter(A=part(adapter.A), B=part(adapter.B), extra=part(adapter.extra))


def unpack_adapter(adapter: Adapter) -> Adapter:
    """The plain adapter a packed one stands for (a plain one is returned as it is)."""
    from decaf_ray.math.compress import Packed, unpack

    values = [v for d in (adapter.A, adapter.B, adapter.extra) for v in d.values()]
    if not any(isinstance(v, Packed) for v in values):
        return adapter

    def part(d: dict) -> dict:
        return {k: unpack(v) if isinstance(v, Packed) else v for k, v in d.items()}

    return Adapter(A=part(adapter.A), B=part(adapter.B), extra=part(adapter.extra))


Inbox = Sequence[tuple[float, Adapter]]  # (mixing weight, message), the node's own included


def widest(adapters: Sequence[Adapter]) -> Adapter:
    """The adapter of the largest rank (the first one when ranks are equal)."""
    return max(adapters, key=lambda a: max((x.shape[0] for x in a.A.values()), default=0))


def pad_rank(x: np.ndarray, part: str, rank: int) -> np.ndarray:
    """A factor zero-padded to ``rank`` (A: rows, B: columns); the product is unchanged.
    Factors of different ranks (``model.ranks``) meet this way in mixes and metrics."""
    axis = 0 if part == "A" else 1
    if part not in ("A", "B") or x.shape[axis] == rank:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, rank - x.shape[axis])
    return np.pad(x, widths)


def one_rank(adapter: Adapter) -> Adapter:
    """``adapter`` with every module zero-padded to the largest rank among them (the
    products are unchanged): peft builds all of a model's LoRA layers at one rank ``r``."""
    rank = max((a.shape[0] for a in adapter.A.values()), default=0)
    return Adapter(
        A={m: pad_rank(a, "A", rank) for m, a in adapter.A.items()},
        B={m: pad_rank(b, "B", rank) for m, b in adapter.B.items()},
        extra=adapter.extra,
    )


def mix_to_rank(
    w: Sequence[float] | np.ndarray, factors: Sequence[np.ndarray], part: str, rank: int
) -> np.ndarray:
    """Weighted mean of ``part`` factors of possibly different ranks, as a node of ``rank``
    keeps it: zero-padded to the largest rank, mixed, cut to the node's own rank."""
    axis = 0 if part == "A" else 1
    top = max(rank, *(f.shape[axis] for f in factors))
    mixed = mix(w, [pad_rank(f, part, top) for f in factors])
    return mixed[:rank] if axis == 0 else mixed[:, :rank]


def mix_adapters(
    inbox: Inbox, own: Adapter, parts: tuple[str, ...] = ("A", "B", "extra")
) -> Adapter:
    """Weighted average of each tensor of ``parts``; a tensor absent from the messages, or of a
    part not listed, keeps ``own``'s, and so does every tensor when no message has a weight
    (the node heard nothing, not even itself: it keeps its state)."""
    w = [wj for wj, _ in inbox]
    if not any(wj != 0.0 for wj in w):
        parts = ()

    def part(name: str) -> dict[str, np.ndarray]:
        if name not in parts:
            return dict(getattr(own, name))
        mine = getattr(own, name)
        out = {}
        for key, value in mine.items():
            if all(key in getattr(msg, name) for _, msg in inbox):
                arrays = [getattr(msg, name)[key] for _, msg in inbox]
                shapes = {a.shape for a in arrays}
                if len(shapes) == 1 and value.shape in shapes:
                    out[key] = mix(w, arrays)
                    continue
                out[key] = mix_to_rank(w, arrays, name, value.shape[0 if name == "A" else 1])
            else:
                out[key] = value
        return out

    return Adapter(A=part("A"), B=part("B"), extra=part("extra"))


class Algorithm(ABC):
    """Base hooks; subclasses override what differs. Defaults describe factor averaging."""

    name = "base"
    communicates = True  # False: no messages at all (local training)
    uses_server = False  # True: a server aggregates all messages (fedavg)
    trains_A = True  # False: A stays frozen at its shared initial value (dlora_fa)
    resets_moments = False  # True: zero the optimizer moments of A and B after combining
    merges = False  # True: hosts merge the server's update into the base; adapters restart (flora)
    message_period = 1  # message_in_round repeats every this many rounds (rolora: 2)

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> Algorithm:
        """The algorithm with its options from ``cfg`` (a method with none ignores it)."""
        return cls()

    def message(self, adapter: Adapter) -> Adapter:
        """What a node sends its neighbours after local training."""
        return adapter

    def trained_factors(self, round_idx: int) -> tuple[str, ...]:
        """Which LoRA factors local training updates in round ``round_idx``."""
        return ("A", "B") if self.trains_A else ("B",)

    def message_in_round(self, adapter: Adapter, round_idx: int) -> Adapter:
        """What a node sends after round ``round_idx`` (a method whose message changes with
        the round overrides this and sets ``message_period``; :meth:`message` is the message
        outside a round, e.g. a rejoining node's view of a neighbour)."""
        return self.message(adapter)

    @abstractmethod
    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        """New state of a node from its own state and the weighted messages it received."""

    def combine_all(
        self, owns: Sequence[Adapter], inboxes: Sequence[Inbox]
    ) -> list[tuple[Adapter, dict[str, float]]]:
        """:meth:`combine` of each node of a host, in order. A method that can stack many
        nodes into one batched call (decaf's TSVDs) overrides this with the same results."""
        return [self.combine(own, inbox) for own, inbox in zip(owns, inboxes)]

    def aggregate(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> Adapter:
        """Server step for server-based algorithms."""
        raise TypeError(f"{self.name} has no server step")
