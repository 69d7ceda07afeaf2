"""What a run does, decided on the virtual clock before any training: one Step per node-round.

A :class:`Step` says when node i trains in round t, when it combines, and with which messages
(sender, the sender's round, weight). Weights are row i of Pi_t restricted to the messages the
node holds, renormalised to sum to one: w_ij = Pi_ij / sum_{k held} Pi_ik. When everything
arrived the row is used unchanged (bit for bit). The plan depends only on the World and the
message size, never on the wall clock, so it is identical on every machine.

:class:`SyncPlanner` covers ``sync`` (barrier rounds; the last arrival ends the round) and
``deadline`` (rounds of at most ``deadline_s``; later messages are dropped);
:class:`~decaf_ray.virtual.des.AsyncPlanner` covers ``async`` and ``bounded``. Both yield
their steps as virtual time advances (:mod:`decaf_ray.virtual.stream` keeps a window of them
ahead of the executor); ``plan_sync`` and ``plan_async`` collect every step into a
:class:`Plan` (small runs and tests). Both planners give the three
counts one meaning, so that with staleness 0 and equal speeds they give identical steps:

- ``sent``: messages node i transmits after its round-t local steps, one to each neighbour of
  G_t that is present at that moment; a neighbour that is away (churn) or has stopped is sent
  nothing. Lost messages were sent. ``bytes_sent`` is ``sent`` times the message size.
- ``dropped``: messages sent to node i that it never got: lost on the link, later than the
  deadline, or arriving while it was away; counted in its first step after they were due.
- rejoin: a node back from churn (``rejoin: neighbours``) first combines, with its algorithm's
  rule, its present neighbours' *current states* (each neighbour's state after its latest
  combine, or its initial state), each cut to the message that neighbour would send, with
  Pi_t's weights renormalised over them; its own stale state is left out. A rejoin receipt
  names (neighbour, the round of that state, weight, when the state was made, now).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from decaf_ray.virtual.churn import rejoining
from decaf_ray.virtual.links import MessageSizes
from decaf_ray.virtual.world import World


@dataclass(frozen=True)
class Receipt:
    """One message in an inbox: sender j's round-r state, its weight, when sent and arrived."""

    sender: int
    sender_round: int
    weight: float
    sent_s: float
    arrived_s: float


@dataclass(frozen=True)
class Step:
    """Node ``node``'s round ``round_idx``: train, then combine ``inbox`` at ``combine_s``."""

    node: int
    round_idx: int
    start_s: float  # local steps begin
    trained_s: float  # local steps end; the node's message leaves
    combine_s: float  # the node combines (after waiting, in bounded mode)
    inbox: tuple[Receipt, ...]  # the node's own message included, in sender order
    rejoin: tuple[Receipt, ...] = ()  # non-empty: start from these neighbours' states' mix
    sent: int = 0  # messages this node sent this round, lost ones included (see above)
    dropped: int = 0  # messages sent to this node that it never got (see above)
    max_lag_rounds: int = 0  # max over awaited neighbours of round_idx - their round heard

    @property
    def idle_s(self) -> float:
        return max(0.0, self.combine_s - self.trained_s)


@dataclass(frozen=True)
class Plan:
    steps: dict[tuple[int, int], Step]  # (node, round) -> step; absent node-rounds are missing
    events: tuple[tuple, ...]  # (time_s, kind, node, round) in processing order

    @property
    def last_round(self) -> int:
        """The last round any node runs (fewer than train.rounds under a time budget)."""
        return max((t for _, t in self.steps), default=0)

    def round_end_s(self, round_idx: int) -> float:
        """Virtual time by which every node has combined round ``round_idx`` or stopped short of
        it: max_i combine_s of node i's latest step with round <= round_idx (monotone in t)."""
        ends = self._round_ends
        return ends[min(round_idx, len(ends) - 1)] if round_idx > 0 else 0.0

    @cached_property
    def _round_ends(self) -> list[float]:
        """round_end_s of rounds 0..last, in one pass: a node's combine times grow with its
        rounds, so the max over latest steps is the running max over all steps so far."""
        best = [0.0] * (self.last_round + 1)
        for (_, t), st in self.steps.items():
            best[t] = max(best[t], st.combine_s)
        for t in range(1, len(best)):
            best[t] = max(best[t], best[t - 1])
        return best


def weighted(
    Pi_row: Mapping[int, float],
    node: int,
    held: list[tuple[int, int, float, float]],
    missing: str = "renormalise",
) -> tuple[Receipt, ...]:
    """Receipts of the held messages (sender, round, sent, arrived), the node's own included.

    ``Pi_row`` is {j: Pi_ij} over the row's non-zero entries (:meth:`Neighbours.row`).
    ``missing="renormalise"``: w_ij = Pi_ij / sum_{k held} Pi_ik. ``missing="to_self"``: held
    neighbours keep Pi_ij and the node's own weight takes the rest, w_ii = 1 - sum_{j held,
    j != i} Pi_ij (as if the missing links were absent from the graph: Pi stays symmetric and
    doubly stochastic when losses are symmetric). If everything arrived, w is Pi's row as is.
    A row with Pi_ii = 0 works the same way; if nothing with weight arrived, the node keeps
    its own state (w_ii = 1).
    """
    held = sorted(held)
    senders = [j for j, *_ in held]
    w = np.array([Pi_row.get(j, 0.0) for j in senders], dtype=np.float64)
    if not set(Pi_row) <= set(senders):  # some neighbour's message is missing
        me = senders.index(node)
        if missing == "to_self" or not w.sum() > 0:
            w[me] = 1.0 - np.delete(w, me).sum()
        else:
            w = w / w.sum()
    return tuple(Receipt(j, r, float(wj), s, a) for (j, r, s, a), wj in zip(held, w))


def rejoin_receipts(Pi_row: Mapping[int, float], node: int, held: list) -> tuple[Receipt, ...]:
    """Receipts of neighbours' states (self excluded), held as (neighbour, state's round,
    state made at, now); weights Pi_ij ({j: Pi_ij} as in :func:`weighted`) renormalised over
    them."""
    others = sorted(h for h in held if h[0] != node and Pi_row.get(h[0], 0.0) > 0)
    if not others:
        return ()
    w = np.array([Pi_row[j] for j, *_ in others], dtype=np.float64)
    w = w / w.sum()
    return tuple(Receipt(j, r, float(wj), s, a) for (j, r, s, a), wj in zip(others, w))


class SyncPlanner:
    """Barrier rounds. Round t starts at T0 (end of round t - 1); present node i publishes at
    T0 + c_i; j's message reaches i at T0 + c_j + delay unless lost. sync: the round ends at the
    last arrival (or last training end). deadline: the round ends at min(that, T0 + deadline_s)
    and messages arriving after T0 + deadline_s are dropped (a node slower than the deadline
    still completes its own steps; only its messages are late).

    :meth:`batches` yields round 1's steps (a list in node order), then round 2's...; memory
    is O(n + nnz) whatever the number of rounds. ``events`` (a list) records (time_s, kind,
    node, round). Between two batches :attr:`settled_round` and :meth:`settled` describe what
    the steps still to come can read."""

    def __init__(
        self,
        world: World,
        nbytes: MessageSizes,
        deadline_s: float | None = None,
        rejoin: str = "stale",
        missing: str = "renormalise",
        budget_s: float | None = None,
        events: list | None = None,
    ) -> None:
        self.world, self.delay = world, world.link.delays_s(nbytes, world.n)  # (n, cycle)
        self.deadline_s, self.rejoin, self.missing, self.budget_s = (
            deadline_s,
            rejoin,
            missing,
            budget_s,
        )
        self.events = events
        self.settled_round = 0  # every step of rounds <= this one has been yielded
        self.combined = [(0, 0.0)] * world.n  # node -> (round, time) of its latest combine

    def settled(self, kind: str, node: int, round_idx: int) -> bool:
        """True when no step still to come reads ``kind`` ("message" or "state") of
        (node, round): a round's messages are read in that round only; a rejoin reads a
        node's latest state."""
        if kind == "message":
            return round_idx <= self.settled_round
        return round_idx < self.combined[node][0]

    def batches(self) -> Iterator[list[Step]]:
        world, delay, deadline_s, combined = self.world, self.delay, self.deadline_s, self.combined
        T0 = 0.0
        for t in range(1, world.rounds + 1):
            if self.budget_s is not None and T0 >= self.budget_s:
                break  # the time budget is spent: no new round starts
            nb, present = world.neighbours(t), world.active[:, t - 1]
            delay_t = delay[:, (t - 1) % delay.shape[1]].tolist()  # each sender's, this round
            trained = {i: T0 + float(world.compute_s[i, t - 1]) for i in np.flatnonzero(present)}
            trained = {int(i): c for i, c in trained.items()}
            ends = list(trained.values())
            held = {i: [(i, t, trained[i], trained[i])] for i in trained}
            dropped = dict.fromkeys(trained, 0)
            sent = dict.fromkeys(trained, 0)
            limit = T0 + deadline_s if deadline_s is not None else np.inf
            for j in trained:
                for i in nb.receivers(j):
                    if i not in trained:
                        continue  # absent nodes neither send nor receive
                    sent[j] += 1
                    arrive = trained[j] + delay_t[j]
                    ends.append(arrive)
                    if world.is_lost(t, j, i) or arrive > limit:
                        dropped[i] += 1
                    else:
                        held[i].append((j, t, trained[j], arrive))
            end = max(ends) if ends else T0
            if deadline_s is not None:
                end = min(end, limit)
            batch = []
            for i in sorted(trained):
                row = nb.row(i)
                back = ()
                if self.rejoin == "neighbours" and rejoining(world.active, i, t):
                    states = [(j, *combined[j], T0) for j in row if j in trained]  # present
                    back = rejoin_receipts(row, i, states)
                if self.events is not None:
                    self.events.append((end, "combine", i, t))
                step = Step(
                    i,
                    t,
                    T0,
                    trained[i],
                    end,  # deadline: even a node slower than the deadline combines then
                    weighted(row, i, held[i], self.missing),
                    back,
                    sent[i],
                    dropped[i],
                )
                batch.append(step)
            for i in trained:
                combined[i] = (t, end)
            self.settled_round = t
            T0 = end
            yield batch


def plan_sync(
    world: World,
    nbytes: MessageSizes,
    deadline_s: float | None = None,
    rejoin: str = "stale",
    missing: str = "renormalise",
    budget_s: float | None = None,
) -> Plan:
    """Every step of :class:`SyncPlanner` at once (O(n T) memory: small runs and tests)."""
    events: list = []
    planner = SyncPlanner(world, nbytes, deadline_s, rejoin, missing, budget_s, events)
    steps = {(st.node, st.round_idx): st for batch in planner.batches() for st in batch}
    return Plan(steps, tuple(events))
