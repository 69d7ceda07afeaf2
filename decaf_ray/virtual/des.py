"""The discrete-event plan of ``async`` and ``bounded`` runs.

Every node loops on its own clock: train round t for c_i(t) virtual seconds, publish, then
combine the latest message it holds from each neighbour of G_t (possibly stale, possibly from
a faster neighbour's later round) with Pi_t's weights renormalised over what it holds, and
start round t + 1 at once. Nobody waits for the slowest node.

With a time budget, a node starts no round after ``budget_s``: fast nodes then run more rounds
than slow ones in the same virtual time, which is what asynchrony buys.

``bounded`` (staleness s): node i combines round t only when, for every present neighbour j
of G_t, j has published round t - s and j's transmission of that round to i is no longer in
flight (delivered or lost), and it uses only messages of round t - s or later (an older one it
still holds is left out, as if lost). With s = 0 and equal speeds this is exactly ``sync``,
losses and latency included (tested); so is ``async`` without losses and latency, because at
equal times publications and arrivals are processed before combines.

Nothing is sent to a node that is away or has stopped; a message already on its way when its
receiver leaves is dropped, and a node's neighbours forget its messages when it leaves: those
they held then and those still on their way to them (so latency never lets more of a departed
node's information through). A node away in round t spends c_i(t) away and neither sends nor
combines; on return it starts from its own stale state or, with ``rejoin="neighbours"``, from
the renormalised mix of its present neighbours' current states (their latest combine; see
:mod:`.plan` for the meaning of ``sent``, ``dropped`` and a rejoin, shared with
``plan_sync``). The rejoin is decided after every round start at that instant, so it sees who
else is back.

The planner yields the steps of each event as it processes them (:meth:`AsyncPlanner.batches`)
and keeps only what is in flight: per node the messages it holds and awaits, and reference
counts that say which messages and states a step still to come may read (:meth:`settled`).
Every scan is over a node's neighbours (O(degree)), never over all n nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from decaf_ray.virtual.churn import rejoining
from decaf_ray.virtual.events import EventQueue
from decaf_ray.virtual.links import MessageSizes
from decaf_ray.virtual.plan import Plan, Step, rejoin_receipts, weighted
from decaf_ray.virtual.world import World

# priorities at equal times: publications, arrivals, combines, round starts, then rejoins
_PUBLISH, _ARRIVE, _COMBINE, _BEGIN, _REJOIN = range(5)


class AsyncPlanner:
    """``staleness=None`` is ``async``, an integer s is ``bounded``. :meth:`batches` yields the
    steps each event completes; between two batches :attr:`settled_round` (every step of the
    rounds up to it has been yielded) and :meth:`settled` hold. ``events`` (a list) records
    every event as (time_s, kind, node, round)."""

    def __init__(
        self,
        world: World,
        nbytes: MessageSizes,
        staleness: int | None = None,
        rejoin: str = "stale",
        missing: str = "renormalise",
        budget_s: float | None = None,
        events: list | None = None,
    ) -> None:
        n = world.n
        delays = world.link.delays_s(nbytes, n)  # (n, cycle): per sender and round
        self.world, self.delay, self.cycle = world, delays.tolist(), delays.shape[1]
        self.staleness, self.rejoin, self.missing, self.budget_s = (
            staleness,
            rejoin,
            missing,
            budget_s,
        )
        self.events = events
        self.held: list[dict[int, tuple]] = [{} for _ in range(n)]  # i -> {j: (r, sent, arr)}
        self.holders: list[set[int]] = [set() for _ in range(n)]  # j -> {i: j in held[i]}
        self.inflight: list[dict[int, list[int]]] = [{} for _ in range(n)]  # i -> {j: [r]}
        self.published = [0] * n
        self.passed = [0] * n  # latest round each node published or skipped (away)
        self.combined = [(0, 0.0)] * n  # node -> (round, time) of its latest combine
        self.away = [False] * n
        self.left_s = [-float("inf")] * n  # when each node last left (churn)
        self.finished = [False] * n
        self.started: dict[tuple[int, int], list] = {}  # (i, t) -> [start, trained, sent, back]
        self.dropped = [0] * n
        self.waiting: dict[int, tuple[int, float]] = {}  # parked combines: i -> (round, time)
        # what steps still to come may read: message (j, r) held, in flight or j's own until
        # its combine; state (j, r) named by a rejoin decided but not yet yielded
        self.message_refs: Counter = Counter()
        self.state_refs: Counter = Counter()
        # node i has yielded every step of its rounds <= frontier[i] (end: rounds + 1)
        self.frontier = [0] * n
        self._at = Counter({0: n})  # frontier value -> nodes there
        self.settled_round = 0
        self._out: list[Step] = []

    # ------------------------------------------------------------------ what is settled

    def settled(self, kind: str, node: int, round_idx: int) -> bool:
        """True when no step still to come reads ``kind`` ("message" or "state") of
        (node, round): the message is held, awaited or pending nowhere, or the state is no
        longer the node's latest and no decided rejoin names it."""
        if kind == "message":
            return (node, round_idx) not in self.message_refs
        return (node, round_idx) not in self.state_refs and round_idx < self.combined[node][0]

    def _ref(self, refs: Counter, key: tuple[int, int], by: int) -> None:
        refs[key] += by
        if refs[key] == 0:
            del refs[key]

    def _advance(self, i: int, frontier: int) -> None:
        self._at[self.frontier[i]] -= 1
        self._at[frontier] += 1
        self.frontier[i] = frontier
        while self._at[self.settled_round] == 0 and self.settled_round <= self.world.rounds:
            self._at.pop(self.settled_round, None)
            self.settled_round += 1

    def _hold(self, i: int, j: int, entry: tuple) -> None:
        if j in self.held[i]:
            self._ref(self.message_refs, (j, self.held[i][j][0]), -1)
        self.held[i][j] = entry
        self.holders[j].add(i)
        self._ref(self.message_refs, (j, entry[0]), +1)

    def _drop_held(self, i: int, j: int) -> None:
        r = self.held[i].pop(j)[0]
        self.holders[j].discard(i)
        self._ref(self.message_refs, (j, r), -1)

    # ------------------------------------------------------------------ the model

    def _lag_ok(self, i: int, t: int) -> tuple[bool, int]:
        s, T, lag = self.staleness, self.world.rounds, 0
        for j in self.world.neighbours(t).row(i):
            if j == i or self.away[j] or self.finished[j]:
                continue
            lag = max(lag, t - self.published[j])
            pending = self.inflight[i].get(j, [])
            if s is not None and (
                max(self.published[j], self.passed[j]) < min(t - s, T)
                or any(r <= t - s for r in pending)
            ):
                return False, lag
        return True, lag

    def _combine(self, q: EventQueue, i: int, t: int, now: float) -> None:
        ok, lag = self._lag_ok(i, t)
        if not ok:
            self.waiting[i] = (t, now)
            return
        self.waiting.pop(i, None)
        start, trained, sent, back = self.started.pop((i, t))
        row = self.world.neighbours(t).row(i)
        own = (i, t, trained, trained)
        oldest = 0 if self.staleness is None else t - self.staleness
        held = self.held[i]
        msgs = [own] + [
            (j, *held[j])
            for j in sorted(held)
            if j != i and row.get(j, 0.0) > 0 and held[j][0] >= oldest
        ]
        inbox = weighted(row, i, msgs, self.missing)
        self._out.append(Step(i, t, start, trained, now, inbox, back, sent, self.dropped[i], lag))
        self._ref(self.message_refs, (i, t), -1)  # its own message: read by this step
        for rc in back:
            self._ref(self.state_refs, (rc.sender, rc.sender_round), -1)
        self.dropped[i] = 0
        self.combined[i] = (t, now)
        self._advance(i, t)
        if self.events is not None:
            self.events.append((now, "combine", i, t))
        q.push(now, _BEGIN, "begin", i, t + 1)

    def _retry(self, q: EventQueue, now: float, changed: int, itself: bool = False) -> None:
        """Parked combines that node ``changed``'s news may unblock, in node order: its own
        (``itself``: a message reached it), or those of the nodes that weigh it in their
        round's Pi (it published, stopped or left)."""
        if not self.waiting:
            return
        if itself:
            ready = [changed] if changed in self.waiting else []
        else:
            rounds = {t for t, _ in self.waiting.values()}
            ready = sorted(
                k
                for t in rounds
                for k in self.world.neighbours(t).receivers(changed)
                if k in self.waiting and self.waiting[k][0] == t
            )
        for i in ready:
            self._combine(q, i, self.waiting[i][0], now)

    def batches(self) -> Iterator[list[Step]]:
        n, T = self.world.n, self.world.rounds
        q = EventQueue()
        for i in range(n):
            q.push(0.0, _BEGIN, "begin", i, 1)
        while len(q):
            ev = q.pop()
            self._event(q, ev)
            if self._out:
                out, self._out = self._out, []
                yield out
        if self.waiting:
            raise RuntimeError(f"bounded plan deadlocked with nodes {sorted(self.waiting)} waiting")
        assert self.settled_round == T + 1, (self.settled_round, T)

    def _event(self, q: EventQueue, ev) -> None:
        world, T = self.world, self.world.rounds
        now, i, t = ev.time_s, ev.node, ev.round_idx
        if self.events is not None:
            self.events.append((now, ev.kind, i, t))
        if ev.kind == "begin":
            if t > T or (self.budget_s is not None and now >= self.budget_s):
                self.finished[i] = True  # done: all rounds, or the time budget is spent
                for j in list(self.held[i]):
                    self._drop_held(i, j)  # it combines no more
                self._advance(i, T + 1)
                self._retry(q, now, i)  # nobody waits for a node that has stopped
                return
            if not world.active[i, t - 1]:
                self.away[i], self.left_s[i] = True, now
                for k in list(self.holders[i]):
                    self._drop_held(k, i)  # neighbours forget a node that left
                self._advance(i, t)  # no step in round t
                self.passed[i] = t  # nor a message: nobody waits for it once it is back
                q.push(now + float(world.compute_s[i, t - 1]), _BEGIN, "begin", i, t + 1)
                self._retry(q, now, i)  # neighbours waiting on i stop waiting
                return
            if rejoining(world.active, i, t):
                self.away[i] = False
                if self.rejoin == "neighbours":  # once everyone starting now has started
                    q.push(now, _REJOIN, "rejoin", i, t)
            trained = now + float(world.compute_s[i, t - 1])
            self.started[(i, t)] = [now, trained, 0, ()]
            q.push(trained, _PUBLISH, "publish", i, t)
        elif ev.kind == "rejoin":  # pull the present neighbours' current states
            row = world.neighbours(t).row(i)
            states = [(j, *self.combined[j], now) for j in row if not self.away[j]]
            back = rejoin_receipts(row, i, states)
            self.started[(i, t)][3] = back
            for rc in back:
                self._ref(self.state_refs, (rc.sender, rc.sender_round), +1)
        elif ev.kind == "publish":
            self.published[i] = t
            self._ref(self.message_refs, (i, t), +1)  # read by its own combine
            delay = self.delay[i][(t - 1) % self.cycle]  # i's message of round t
            for k in world.neighbours(t).receivers(i):
                if not self.away[k] and not self.finished[k]:
                    self.started[(i, t)][2] += 1
                    self.inflight[k].setdefault(i, []).append(t)
                    self._ref(self.message_refs, (i, t), +1)
                    q.push(now + delay, _ARRIVE, "arrive", k, t, (i, now))
            q.push(now, _COMBINE, "combine_due", i, t)
            self._retry(q, now, i)
        elif ev.kind == "arrive":
            j, sent_s = ev.data
            self.inflight[i][j].remove(t)
            self._ref(self.message_refs, (j, t), -1)
            if world.is_lost(t, j, i) or self.away[i]:
                self.dropped[i] += 1
            elif self.finished[i]:
                pass  # a node that has stopped combines no more: keeping it changes nothing
            elif sent_s <= self.left_s[j]:
                pass  # its sender has left since: forgotten, as the ones held when it left
            elif j not in self.held[i] or self.held[i][j][0] < t:
                self._hold(i, j, (t, sent_s, now))
            self._retry(q, now, i, itself=True)
        elif ev.kind == "combine_due":
            self._combine(q, i, t, now)


def plan_async(
    world: World,
    nbytes: float,
    staleness: int | None = None,
    rejoin: str = "stale",
    missing: str = "renormalise",
    budget_s: float | None = None,
) -> Plan:
    """Every step of :class:`AsyncPlanner` at once (O(n T) memory: small runs and tests)."""
    events: list = []
    planner = AsyncPlanner(world, nbytes, staleness, rejoin, missing, budget_s, events)
    steps = {(st.node, st.round_idx): st for batch in planner.batches() for st in batch}
    return Plan(steps, tuple(events))
