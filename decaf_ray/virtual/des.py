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
receiver leaves is dropped, and a node's neighbours forget the messages they held from it when
it leaves. A node away in round t spends c_i(t) away and neither sends nor combines; on return
it starts from its own stale state or, with ``rejoin="neighbours"``, from the renormalised mix
of its present neighbours' current states (their latest combine; see :mod:`.plan` for the
meaning of ``sent``, ``dropped`` and a rejoin, shared with ``plan_sync``). The rejoin is
decided after every round start at that instant, so it sees who else is back.
"""

from __future__ import annotations

from decaf_ray.virtual.churn import rejoining
from decaf_ray.virtual.events import EventQueue
from decaf_ray.virtual.plan import Plan, Step, rejoin_receipts, weighted
from decaf_ray.virtual.world import World

# priorities at equal times: publications, arrivals, combines, round starts, then rejoins
_PUBLISH, _ARRIVE, _COMBINE, _BEGIN, _REJOIN = range(5)


def plan_async(
    world: World,
    nbytes: float,
    staleness: int | None = None,
    rejoin: str = "stale",
    missing: str = "renormalise",
    budget_s: float | None = None,
) -> Plan:
    """Plan every node-round; ``staleness=None`` is ``async``, an integer s is ``bounded``."""
    n, T, delay = world.n, world.rounds, world.link.delay_s(nbytes)
    q = EventQueue()
    held: list[dict[int, tuple]] = [{} for _ in range(n)]  # i -> {j: (round, sent, arrived)}
    inflight: list[dict[int, list[int]]] = [{} for _ in range(n)]  # i -> {j: [rounds]}
    published = [0] * n
    combined = [(0, 0.0)] * n  # node -> (round, time) of its latest combine
    away = [False] * n
    finished = [False] * n
    started: dict[tuple[int, int], tuple] = {}  # (i, t) -> (start, trained, sent, rejoin)
    dropped = [0] * n
    waiting: dict[int, tuple[int, float]] = {}  # parked combines: i -> (round, trained time)
    steps: dict[tuple[int, int], Step] = {}
    events: list[tuple] = []

    def lag_ok(i: int, t: int) -> tuple[bool, int]:
        Pi = world.Pi(t)
        lag = 0
        for j in range(n):
            if j == i or Pi[i, j] == 0 or away[j] or finished[j]:
                continue
            lag = max(lag, t - published[j])
            pending = inflight[i].get(j, [])
            if staleness is not None and (
                published[j] < min(t - staleness, T) or any(r <= t - staleness for r in pending)
            ):
                return False, lag
        return True, lag

    def combine(i: int, t: int, now: float) -> None:
        ok, lag = lag_ok(i, t)
        if not ok:
            waiting[i] = (t, now)
            return
        waiting.pop(i, None)
        start, trained, sent, back = started[(i, t)]
        Pi = world.Pi(t)
        own = (i, t, trained, trained)
        oldest = 0 if staleness is None else t - staleness
        msgs = [own] + [
            (j, *held[i][j])
            for j in sorted(held[i])
            if j != i and Pi[i, j] > 0 and held[i][j][0] >= oldest
        ]
        steps[(i, t)] = Step(
            i,
            t,
            start,
            trained,
            now,
            weighted(Pi[i], i, msgs, missing),
            back,
            sent,
            dropped[i],
            lag,
        )
        dropped[i] = 0
        combined[i] = (t, now)
        events.append((now, "combine", i, t))
        q.push(now, _BEGIN, "begin", i, t + 1)

    def retry(now: float) -> None:
        for i in sorted(waiting):
            t, _ = waiting[i]
            combine(i, t, now)

    for i in range(n):
        q.push(0.0, _BEGIN, "begin", i, 1)
    while len(q):
        ev = q.pop()
        now, i, t = ev.time_s, ev.node, ev.round_idx
        events.append((now, ev.kind, i, t))
        if ev.kind == "begin":
            if t > T or (budget_s is not None and now >= budget_s):
                finished[i] = True  # done: all rounds, or the time budget is spent
                retry(now)  # nobody waits for a node that has stopped
                continue
            if not world.active[i, t - 1]:
                away[i] = True
                for k in range(n):
                    held[k].pop(i, None)  # neighbours forget a node that left
                q.push(now + float(world.compute_s[i, t - 1]), _BEGIN, "begin", i, t + 1)
                retry(now)  # neighbours waiting on i stop waiting
                continue
            if rejoining(world.active, i, t):
                away[i] = False
                if rejoin == "neighbours":  # once everyone starting now has started
                    q.push(now, _REJOIN, "rejoin", i, t)
            trained = now + float(world.compute_s[i, t - 1])
            started[(i, t)] = [now, trained, 0, ()]
            q.push(trained, _PUBLISH, "publish", i, t)
        elif ev.kind == "rejoin":  # pull the present neighbours' current states
            states = [(j, *combined[j], now) for j in range(n) if not away[j]]
            started[(i, t)][3] = rejoin_receipts(world.Pi(t)[i], i, states)
        elif ev.kind == "publish":
            published[i] = t
            Pi = world.Pi(t)
            for k in range(n):
                if k != i and Pi[k, i] > 0 and not away[k] and not finished[k]:
                    started[(i, t)][2] += 1
                    inflight[k].setdefault(i, []).append(t)
                    q.push(now + delay, _ARRIVE, "arrive", k, t, (i, now))
            q.push(now, _COMBINE, "combine_due", i, t)
            retry(now)
        elif ev.kind == "arrive":
            j, sent_s = ev.data
            inflight[i][j].remove(t)
            if world.lost[t - 1, j, i] or away[i]:
                dropped[i] += 1
            elif j not in held[i] or held[i][j][0] < t:
                held[i][j] = (t, sent_s, now)
            retry(now)
        elif ev.kind == "combine_due":
            combine(i, t, now)
    if waiting:
        raise RuntimeError(f"bounded plan deadlocked with nodes {sorted(waiting)} waiting")
    return Plan(steps, tuple(events))
