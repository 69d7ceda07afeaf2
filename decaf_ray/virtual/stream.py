"""The plan of a run as it is made: a window of steps ahead of the executor.

A planner (:class:`~decaf_ray.virtual.plan.SyncPlanner`,
:class:`~decaf_ray.virtual.des.AsyncPlanner`) yields its steps in batches as virtual time
advances. :class:`PlanStream` runs it only as far as the executor asks (``pull``: until every
step of rounds <= t has been made), buffers what it made until the executor ``take``s it, and
keeps what the executor still needs to know about rounds it has not seen whole: the round ends
(round_end_s) of recent rounds, the last round, and which values no step still to come can
read (``settled``). Memory is O(n + nnz + the window's steps), whatever ``train.rounds``.

Step order: a node's steps come in round order (its operations then reach its host in plan
order), and the steps of one batch are all made before ``settled`` is asked again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from decaf_ray.virtual.des import AsyncPlanner
from decaf_ray.virtual.links import MessageSizes
from decaf_ray.virtual.plan import Step, SyncPlanner
from decaf_ray.virtual.world import World

if TYPE_CHECKING:
    from collections.abc import Iterator

    from decaf_ray.config import ScheduleConfig


class Planner(Protocol):
    settled_round: int  # every step of rounds <= this one has been yielded

    def batches(self) -> Iterator[list[Step]]: ...

    def settled(self, kind: str, node: int, round_idx: int) -> bool: ...


def make_planner(
    world: World,
    mode: str,
    nbytes: MessageSizes,
    s: ScheduleConfig,
    events: list | None = None,
) -> Planner:
    """The planner of ``mode`` (sync, deadline, async, bounded) for ``world``; ``nbytes`` is
    the size of a message (:data:`MessageSizes`; it sets each sender's link delay); ``s``
    supplies the mode's options."""
    if mode in ("sync", "deadline"):
        deadline = s.deadline_s if mode == "deadline" else None
        return SyncPlanner(world, nbytes, deadline, s.rejoin, s.missing, s.time_budget_s, events)
    if mode in ("async", "bounded"):
        staleness = s.staleness if mode == "bounded" else None
        return AsyncPlanner(world, nbytes, staleness, s.rejoin, s.missing, s.time_budget_s, events)
    raise ValueError(f"unknown schedule.mode {mode!r}")


def last_round_of(world: World, mode: str, budget_s: float | None) -> int | None:
    """The last round any node runs, where it is known before planning: without a time budget,
    the last round with a present node; async under a budget, where node i starts round t at
    S_i(t) = sum_{r < t} c_i(r) (nobody waits), the last t with S_i(t) < budget_s and i present.
    None otherwise (the barrier and bounded modes' round ends depend on everyone)."""
    present = world.active
    if budget_s is None:
        rounds = np.flatnonzero(present.any(axis=0))
        return int(rounds[-1]) + 1 if len(rounds) else 0
    if mode != "async":
        return None
    starts = np.zeros_like(world.compute_s)
    np.cumsum(world.compute_s[:, :-1], axis=1, out=starts[:, 1:])  # sequential, as the clock
    runs = present & (starts < budget_s)
    rounds = np.flatnonzero(runs.any(axis=0))
    return int(rounds[-1]) + 1 if len(rounds) else 0


class PlanStream:
    """``world``'s plan in ``mode``, made as the executor asks for it."""

    def __init__(self, world: World, mode: str, nbytes: MessageSizes, s: ScheduleConfig) -> None:
        self.rounds = world.rounds
        self.planner = make_planner(world, mode, nbytes, s)
        self._batches = self.planner.batches()
        self._known_last = last_round_of(world, mode, s.time_budget_s)
        self.exhausted = False
        self._ready: list[Step] = []  # made, not yet taken
        self._max_round = 0  # the highest round of any step made
        self._best: dict[int, float] = {}  # round not yet ended -> max combine_s of its steps
        self._ends: dict[int, float] = {0: 0.0}  # round -> round_end_s (recent rounds)
        self._ended = 0  # round_end_s is known for rounds <= this one

    # ------------------------------------------------------------------ making steps

    @property
    def settled_round(self) -> int:
        """Every step of rounds <= this one has been made (train.rounds + 1 at the end)."""
        return self.rounds + 1 if self.exhausted else self.planner.settled_round

    def pull(self, until_round: int) -> None:
        """Make steps until every step of rounds <= ``until_round`` is made (or none is left)."""
        while not self.exhausted and self.planner.settled_round < until_round:
            self._next()

    def pull_past(self, round_idx: int) -> None:
        """Make steps until one of a round after ``round_idx`` is made (or none is left)."""
        while not self.exhausted and self._max_round <= round_idx:
            self._next()

    def take(self) -> list[Step]:
        """The steps made since the last call, in the order made."""
        out, self._ready = self._ready, []
        return out

    def settled(self, kind: str, node: int, round_idx: int) -> bool:
        """True when no step not yet made can read ``kind`` ("message", "state") of
        (node, round). Ask only after taking every step made (``take``)."""
        return self.exhausted or self.planner.settled(kind, node, round_idx)

    def _next(self) -> None:
        try:
            batch = next(self._batches)
        except StopIteration:
            self.exhausted = True
            batch = []
        for st in batch:
            t = st.round_idx
            self._best[t] = max(self._best.get(t, 0.0), st.combine_s)
            self._max_round = max(self._max_round, t)
        self._ready.extend(batch)
        settled = min(self.settled_round, self.last_round if self.known_last else self.rounds)
        while self._ended < settled:
            t = self._ended + 1
            self._ends[t] = max(self._ends[t - 1], self._best.pop(t, 0.0))
            self._ended = t

    # ------------------------------------------------------------------ rounds

    @property
    def known_last(self) -> bool:
        return self.exhausted or self._known_last is not None

    @property
    def last_round(self) -> int:
        """The last round any node runs (fewer than train.rounds under a time budget). Until
        it is known (:attr:`known_last`; see :meth:`is_last`) the bound train.rounds."""
        if self.exhausted:
            return self._max_round
        return self._known_last if self._known_last is not None else self.rounds

    def is_last(self, round_idx: int) -> bool:
        """Whether ``round_idx`` is the last round; makes steps until that is known."""
        if not self.known_last:
            self.pull_past(round_idx)
        return round_idx == self.last_round

    def round_end_s(self, round_idx: int) -> float:
        """Virtual time by which every node has combined round ``round_idx`` or stopped short of
        it: max_i combine_s of node i's latest step with round <= round_idx (monotone in t).
        Known once the round's steps are all made, until :meth:`forget_ends` drops it."""
        if round_idx <= 0:
            return 0.0
        if self.known_last:
            round_idx = min(round_idx, self.last_round)
        if round_idx not in self._ends:
            raise KeyError(
                f"round {round_idx}'s end is not known here (made up to round {self._ended}, "
                f"kept from round {min(self._ends)})"
            )
        return self._ends[round_idx]

    def forget_ends(self, before: int) -> None:
        """Drop the round ends of rounds < ``before`` (the executor has closed them)."""
        for t in [t for t in self._ends if t < min(before, self._ended)]:
            del self._ends[t]


__all__ = ["PlanStream", "Planner", "last_round_of", "make_planner"]
