"""A discrete-event queue with deterministic order.

Events are popped by (time_s, priority, node, round_idx, seq): equal times are broken first by
the event kind's priority, then by node id and round, and last by insertion order, so the
order never depends on hashing or on wall-clock timing.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True, frozen=True)
class Event:
    time_s: float
    priority: int
    node: int
    round_idx: int
    seq: int
    kind: str = field(compare=False)
    data: Any = field(default=None, compare=False)


class EventQueue:
    def __init__(self) -> None:
        self._heap: list[Event] = []
        self._seq = itertools.count()

    def push(
        self, time_s: float, priority: int, kind: str, node: int, round_idx: int, data: Any = None
    ) -> None:
        heapq.heappush(
            self._heap, Event(time_s, priority, node, round_idx, next(self._seq), kind, data)
        )

    def pop(self) -> Event:
        return heapq.heappop(self._heap)

    def __len__(self) -> int:
        return len(self._heap)
