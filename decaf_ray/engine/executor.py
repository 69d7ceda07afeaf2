"""The one executor of a plan, for every schedule mode.

The plan (:mod:`decaf_ray.virtual`) fixes, before anything runs, each node's operations and
their inputs: [rejoin from named neighbour states], train round t, combine round t with named
messages (sender, sender's round, weight). The executor runs them on a
:class:`~decaf_ray.engine.hosts.HostGroup`: an operation is submitted as soon as its inputs
exist, calls are batched per host and round, and the driver reacts to completions. A node's
operations reach its host in plan order (Ray keeps the order of calls from one caller). Two
submission policies share everything else:

- **barrier** (``sync``, ``deadline``): nothing of round t + 1 is submitted before round t is
  logged and evaluated, and a round's combines wait until all of its local training is back,
  so the phases of a round run in lock-step; ``train_s``, ``exchange_s``, ``combine_s``,
  ``metrics_s`` and ``eval_s`` are wall seconds of those phases (``exchange_s``: the slowest
  host's fetch of its inbox).
- **dataflow** (``async``, ``bounded``): no barrier; a slow host holds back only the nodes
  whose inboxes name its messages. Rounds overlap, so the phase times are sums of the hosts'
  busy seconds for that round's calls, and ``round_wall_s`` is the time between two rounds
  being logged.

Results never depend on wall-clock timing. Network rows of round t describe the states
{X_i(t)}, each node's after its own round t (a node absent in round t: its latest state), and
are logged once every node is past round t, at virtual time max_i combine_s(i, t). fedavg's
server averages on the driver once every message of the round is in.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from decaf_ray.algorithms import Adapter, make_algorithm, unpack_adapter
from decaf_ray.config import RunConfig
from decaf_ray.engine import stopping
from decaf_ray.engine.hosts import HostGroup, Ticket
from decaf_ray.engine.log import NETWORK, MetricsLog
from decaf_ray.engine.network import average_drift, consensus_metrics, network_average
from decaf_ray.engine.progress import Progress
from decaf_ray.node import Combined, Evaluation, Part, Published, Reply
from decaf_ray.node.state import node_rank
from decaf_ray.prepare import Prepared
from decaf_ray.virtual import Step, build_world, make_plan

BARRIER_MODES = ("sync", "deadline")


@dataclass(frozen=True)
class _Op:
    kind: str  # "rejoin" | "train" | "combine"
    step: Step


@dataclass
class _Round:
    """What the executor knows of one round while it runs (wall times from perf_counter)."""

    steps: int  # node-rounds in the plan
    trained: int = 0  # of which local training is back
    finished: int = 0  # of which the final state is known
    losses: list[float] = field(default_factory=list)
    node_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    busy: Counter = field(default_factory=Counter)  # phase -> summed host seconds
    fetch_max_s: float = 0.0
    started_at: float | None = None
    trained_at: float | None = None
    combined_at: float | None = None
    logged_at: float | None = None
    metrics_s: float = 0.0
    eval_started_at: float | None = None
    evals_pending: int = 0


class Executor:
    """Runs one config's plan on a set-up host group, logging as it goes."""

    def __init__(
        self,
        cfg: RunConfig,
        prep: Prepared,
        hosts: HostGroup,
        log: MetricsLog,
        setup_s: float = float("nan"),
    ) -> None:
        self.cfg, self.prep, self.hosts, self.log = cfg, prep, hosts, log
        self.setup_s = setup_s
        self.n = prep.n
        self.algorithm = make_algorithm(cfg.algorithm)
        self.barrier = cfg.schedule.mode in BARRIER_MODES
        self.sizes = np.array([len(prep.shards[i]) for i in range(self.n)])
        self.world = build_world(cfg, prep.Pi)
        self.message_bytes = hosts.message_bytes()
        self.plan = make_plan(self.world, cfg.schedule.mode, self.message_bytes, cfg.schedule)
        self._round_steps: dict[int, list[Step]] = defaultdict(list)
        for (_, t), st in sorted(self.plan.steps.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            self._round_steps[t].append(st)
        self._queue()
        # stored values, by (node, round); round 0 of _final is the initial state
        self._final: dict[tuple[int, int], Part] = {
            (i, 0): part for i, part in hosts.states().items()
        }
        self._final_rounds = {i: deque([0]) for i in range(self.n)}  # rounds held in _final
        self._retired: set[tuple[int, int]] = set()  # superseded, kept for a pending rejoin
        self._trained: dict[tuple[int, int], Part] = {}  # state after local steps
        self._messages: dict[tuple[int, int], Part] = {}
        self._server: dict[int, Part] = {}
        self._inflight: dict[Ticket, tuple[str, int]] = {}
        self._logged = self._closed = 0  # last round logged / logged and evaluated
        self._last_logged_at = time.perf_counter()
        self._setup_logged = False
        self._slowest_round_s = 0.0

    def _queue(self) -> None:
        """Queue each node's operations in plan order; count the readers of every value."""
        talks = self.algorithm.communicates
        self._ops: dict[int, deque[_Op]] = {i: deque() for i in range(self.n)}
        self._consumed: Counter = Counter()  # operations submitted, per node
        for t in range(1, self.plan.last_round + 1):
            for st in self._round_steps[t]:
                if st.rejoin and talks:
                    self._ops[st.node].append(_Op("rejoin", st))
                self._ops[st.node].append(_Op("train", st))
                if talks:
                    self._ops[st.node].append(_Op("combine", st))
        self._rounds = {t: _Round(len(self._round_steps[t])) for t in self._round_steps}
        self._count_readers()

    def _count_readers(self) -> None:
        """Pending readers of each stored value among the operations not yet submitted:
        ("message"|"state", node, round), ("server", t)."""
        self._readers: Counter = Counter()
        for ops in self._ops.values():
            for op in ops:
                st = op.step
                if op.kind == "rejoin":
                    self._readers.update(("state", rc.sender, rc.sender_round) for rc in st.rejoin)
                elif op.kind == "combine" and self.algorithm.uses_server:
                    self._readers[("server", st.round_idx)] += 1
                elif op.kind == "combine":
                    self._readers.update(("message", rc.sender, rc.sender_round) for rc in st.inbox)

    def final_states(self) -> dict[int, Part]:
        """Each node's latest state (after the last round it ran)."""
        latest: dict[int, tuple[int, Part]] = {}
        for (i, t), part in self._final.items():
            if i not in latest or t > latest[i][0]:
                latest[i] = (t, part)
        return {i: part for i, (_, part) in sorted(latest.items())}

    def held(self) -> dict[str, list[tuple[int, int]]]:
        """(node, round) keys of the values the executor still references, by kind: what
        keeps objects alive in the store (states, trained states, messages)."""
        return {
            "states": sorted(self._final),
            "trained": sorted(self._trained),
            "messages": sorted(self._messages),
        }

    # ------------------------------------------------------------------ checkpoints

    def held_values(self) -> dict[str, dict[tuple[int, int], Adapter]]:
        """With nothing in flight (after :meth:`run` returned or stopped): every value a later
        operation reads, fetched to the driver, by kind: ``states`` (each node's latest, and
        older ones a pending rejoin reads), ``trained`` (states after local steps whose round
        is not logged yet), ``messages`` (sent, not yet combined) and ``server`` (fedavg's
        averages, under node -1)."""
        if self._inflight:
            raise RuntimeError("held_values() needs a quiet executor: calls are in flight")
        server = {(NETWORK, t): part for t, part in self._server.items()}
        out = {}
        for kind, held in (
            ("states", self._final),
            ("trained", self._trained),
            ("messages", self._messages),
            ("server", server),
        ):
            keys = sorted(held)
            values = self.hosts.fetch([held[k] for k in keys])
            out[kind] = {k: unpack_adapter(v) for k, v in zip(keys, values)}  # plain arrays
        return out

    def bookkeeping(self) -> dict:
        """With nothing in flight: where the executor is in its plan, as plain JSON (with
        :meth:`held_values` and the hosts' snapshots, everything a resume needs)."""
        if self._inflight:
            raise RuntimeError("bookkeeping() needs a quiet executor: calls are in flight")
        rounds = {
            str(t): {
                "trained": r.trained,
                "finished": r.finished,
                "losses": r.losses,
                "node_metrics": {str(i): m for i, m in r.node_metrics.items()},
                "started": r.started_at is not None,
            }
            for t, r in self._rounds.items()
            if r.started_at is not None
        }
        return {
            "closed": self._closed,
            "logged": self._logged,
            "consumed": {str(i): c for i, c in self._consumed.items()},
            "final_rounds": {str(i): list(rs) for i, rs in self._final_rounds.items()},
            "retired": sorted(self._retired),
            "rounds": rounds,
        }

    def restore(self, book: dict, values: dict[str, dict[tuple[int, int], Adapter]]) -> None:
        """Go on from a checkpoint (:meth:`bookkeeping` and :meth:`held_values` of a quiet
        executor) as if this executor had run up to it itself. The hosts' nodes must be
        restored too (``HostGroup.restore``)."""
        for i, count in book["consumed"].items():
            for _ in range(count):
                self._ops[int(i)].popleft()
            self._consumed[int(i)] = count
        self._count_readers()
        put = {kind: {k: self.hosts.put(a) for k, a in v.items()} for kind, v in values.items()}
        self._final, self._trained, self._messages = put["states"], put["trained"], put["messages"]
        self._server = {t: part for (_, t), part in put["server"].items()}
        self._final_rounds = {int(i): deque(rs) for i, rs in book["final_rounds"].items()}
        self._retired = {tuple(key) for key in book["retired"]}
        now = time.perf_counter()
        for t in range(1, book["closed"] + 1):
            del self._rounds[t]
        for t, saved in book["rounds"].items():
            r = self._rounds[int(t)]
            r.trained, r.finished, r.losses = saved["trained"], saved["finished"], saved["losses"]
            r.node_metrics = {int(i): m for i, m in saved["node_metrics"].items()}
            r.started_at = now
        self._logged, self._closed = book["logged"], book["closed"]
        self._setup_logged = True
        self._last_logged_at = now

    # ------------------------------------------------------------------ the loop

    def run(
        self, until_round: int | None = None, checkpoint: Callable[[int], None] | None = None
    ) -> None:
        """Run the plan, or until round ``until_round`` is logged and evaluated (call again to
        go on). Either way it returns with nothing in flight: a dataflow run lets the calls it
        started finish (some nodes may then be past that round) and submits no more.

        With ``checkpoint``, the run also pauses like that after every ``checkpoint.every``
        rounds, at its end and when a signal stops it, and calls ``checkpoint(round)``.
        Results do not depend on where it pauses.
        """
        last = self.plan.last_round
        if until_round is not None:
            last = min(until_round, last)
        if not self._setup_logged:
            self._log_setup()
        every = self.cfg.checkpoint.every if checkpoint else 0
        bar = Progress(self.cfg.name, last, self._closed, self.cfg.output.progress)
        try:
            while self._closed < last:
                cut = min(last, (self._closed // every + 1) * every) if every else last
                self._run_to(cut, bar)
                if checkpoint:
                    checkpoint(self._closed)
        except stopping.RunStopped:
            if checkpoint:
                checkpoint(self._closed)
            raise
        finally:
            bar.close()

    def _run_to(self, last: int, bar: Progress) -> None:
        """Go until round ``last`` is closed, then let what is in flight finish."""
        stop_at = None
        while self._closed < last:
            if stopping.requested() is not None and stop_at is None:
                # barrier modes finish every round already started and start none, so a stop
                # loses no round; dataflow modes stop submitting at once (rounds overlap)
                started = [t for t, r in self._rounds.items() if r.started_at is not None]
                stop_at = last = min(last, max(started, default=self._closed))
                if not self.barrier:
                    break
                continue
            while self._submit_ready(last):
                pass
            if self._advance(last, bar):
                continue
            if not self._inflight:
                raise RuntimeError(
                    f"the plan of {self.cfg.name!r} is stuck before round {self._closed + 1}: "
                    "no operation can start (please report this with the config)"
                )
            self._wait(last, bar)
        while self._inflight:  # a pause: what is running finishes, nothing new starts
            self._wait(self.plan.last_round, bar)
        self.log.flush()
        if stop_at is not None:
            raise stopping.RunStopped(self.cfg.name, self._closed, stopping.requested())

    def _wait(self, last: int, bar: Progress) -> None:
        for ticket in self.hosts.wait(list(self._inflight), self._timeout_s()):
            self._complete(ticket, *self._inflight.pop(ticket))
        self._advance(last, bar)

    def _timeout_s(self) -> float | None:
        """How long to wait for any answer before the hosts count as hung: the config's
        limit, else 10 times the slowest round so far (at least 300 s; none before the first
        round is done, which includes warming up)."""
        if self.cfg.cluster.call_timeout_s is not None:
            return self.cfg.cluster.call_timeout_s
        return max(300.0, 10 * self._slowest_round_s) if self._slowest_round_s else None

    def _advance(self, last: int, bar: Progress) -> bool:
        """Log every round that is complete, close every logged round whose evaluations are
        back; True if anything moved."""
        moved = False
        while self._logged < last and self._complete_round(self._logged + 1):
            self._logged += 1
            self._log_round(self._logged)
            moved = True
        while self._closed < self._logged and not self._rounds[self._closed + 1].evals_pending:
            self._closed += 1
            self._close_round(self._closed)
            bar.update(self._progress())
            moved = True
        return moved

    def _complete_round(self, t: int) -> bool:
        r = self._rounds[t]
        return r.finished == r.steps

    # ------------------------------------------------------------------ submission

    def _submit_ready(self, last: int) -> bool:
        """Submit every operation whose inputs exist; True if any was submitted."""
        # barrier: one round at a time; dataflow: whatever is ready (a round can need
        # messages of later rounds of faster nodes)
        gate = min(last, self._closed + 1) if self.barrier else self.plan.last_round
        rejoins: dict[tuple[int, int], dict] = defaultdict(dict)  # (host, round) -> inboxes
        trains: dict[tuple[int, int], list[int]] = defaultdict(list)
        combines: dict[tuple[int, int], dict] = defaultdict(dict)
        for i, ops in self._ops.items():
            while ops and ops[0].step.round_idx <= gate:
                op = ops[0]
                key = (self.hosts.host_of[i], op.step.round_idx)
                if op.kind == "train":
                    trains[key].append(i)
                    ops.popleft()
                    self._consumed[i] += 1
                    break  # its combine needs messages that do not exist yet
                inbox = self._inbox(op)
                if inbox is None:
                    break
                (rejoins if op.kind == "rejoin" else combines)[key][i] = inbox
                ops.popleft()
                self._consumed[i] += 1
                if op.kind == "combine":
                    break
        now = time.perf_counter()  # before submitting: an in-process call runs at once
        for _, t in [*rejoins, *trains, *combines]:
            if self._rounds[t].started_at is None:
                self._rounds[t].started_at = now
        sleep = self.cfg.schedule.debug_sleep_s
        for (k, t), inboxes in sorted(rejoins.items()):
            self._launch(self.hosts.rejoin(k, t, inboxes), "rejoin", t)
        for (k, t), ids in sorted(trains.items()):
            pause = sum(float(sleep.get(i, 0.0)) for i in ids)
            self._launch(self.hosts.train(k, t, ids, pause), "train", t)
        for (k, t), inboxes in sorted(combines.items()):
            self._launch(self.hosts.combine(k, t, inboxes), "combine", t)
        return bool(rejoins or trains or combines)

    def _launch(self, ticket: Ticket, kind: str, t: int) -> None:
        self._inflight[ticket] = (kind, t)

    def _inbox(self, op: _Op) -> list[tuple[float, Part]] | None:
        """(weight, part) of every input of a rejoin or combine, or None if one is missing.

        A rejoin reads neighbours' states (their latest combined state, see the plan); a
        combine reads messages, or fedavg's server average. Once an input is handed to a call,
        its reader count drops; at zero the executor forgets the value (the call holds it).
        """
        st = op.step
        t = st.round_idx
        if op.kind == "rejoin":
            keys = [("state", rc.sender, rc.sender_round) for rc in st.rejoin]
            parts = [self._final.get((j, r)) for _, j, r in keys]
            weights = [rc.weight for rc in st.rejoin]
        elif self.barrier and self._rounds[t].trained < self._rounds[t].steps:
            return None  # lock-step phases: combine once the whole round has trained
        elif self.algorithm.uses_server:
            keys, parts, weights = [("server", t)], [self._server.get(t)], [1.0]
        else:
            keys = [("message", rc.sender, rc.sender_round) for rc in st.inbox]
            parts = [self._messages.get((j, r)) for _, j, r in keys]
            weights = [rc.weight for rc in st.inbox]
        if any(p is None for p in parts):
            return None
        for key in keys:
            self._readers[key] -= 1
            if self._readers[key] == 0:
                self._forget_value(key)
        return list(zip(weights, parts))

    def _forget_value(self, key: tuple) -> None:
        if key[0] == "message":
            del self._messages[key[1:]]
        elif key[0] == "server":
            del self._server[key[1]]
        elif key[1:] in self._retired:
            self._retired.discard(key[1:])
            del self._final[key[1:]]

    # ------------------------------------------------------------------ completions

    def _complete(self, ticket: Ticket, kind: str, t: int) -> None:
        reply = self.hosts.result(ticket)
        r = self._rounds[t]
        if kind == "train":
            self._on_trained(t, reply)
            r.busy["train"] += reply.busy_s
        elif kind in ("combine", "rejoin"):
            r.busy["fetch"] += reply.fetch_s
            r.busy["combine"] += reply.busy_s - reply.fetch_s
            r.fetch_max_s = max(r.fetch_max_s, reply.fetch_s)
            if kind == "combine":
                self._on_combined(t, reply)
        else:
            self._on_evaluated(t, reply)
            r.busy["eval"] += reply.busy_s
            r.evals_pending -= 1

    def _on_trained(self, t: int, reply: Reply[Published]) -> None:
        r, log = self._rounds[t], self.log
        talks, server = self.algorithm.communicates, self.algorithm.uses_server
        for i, pub in reply.nodes.items():
            st = self.plan.steps[(i, t)]
            self._trained[(i, t)] = pub.state
            if server or self._readers[("message", i, t)] > 0:
                self._messages[(i, t)] = pub.message
            sent = 0.0 if not talks else pub.message_bytes * (1 if server else st.sent)
            log.add(t, i, "train_loss", pub.loss, st.trained_s)
            log.add(t, i, "node_train_s", pub.train_s, st.trained_s)
            log.add(t, i, "bytes_sent", float(sent), st.trained_s)
            r.losses.append(pub.loss)
            r.trained += 1
            if not talks:
                self._finish(st, pub.state)
        if r.trained == r.steps:
            r.trained_at = time.perf_counter()
            if server and talks:
                self._server_step(t)
        if r.finished == r.steps:
            r.combined_at = r.trained_at

    def _server_step(self, t: int) -> None:
        """A server method (fedavg...): the server aggregates the round's messages (weighted
        by shard size, as the method says)."""
        ids = [st.node for st in self._round_steps[t]]
        packed = self.hosts.fetch([self._messages.pop((i, t)) for i in ids])
        messages = [unpack_adapter(m) for m in packed]
        sizes = self.sizes[ids]
        self._server[t] = self.hosts.put(self.algorithm.aggregate(messages, sizes))
        interference = self.algorithm.server_interference(messages, sizes)
        if interference is not None:  # None: the method averages no product
            self.log.add(t, NETWORK, "interference", interference, self.plan.round_end_s(t))

    def _on_combined(self, t: int, reply: Reply[Combined]) -> None:
        for i, c in reply.nodes.items():
            st = self.plan.steps[(i, t)]
            for key, value in c.stats.items():
                self.log.add(t, i, key, value, st.combine_s)
            self._finish(st, c.state)
        r = self._rounds[t]
        if r.finished == r.steps:
            r.combined_at = time.perf_counter()

    def _finish(self, st: Step, state: Part) -> None:
        """Node st.node's round st.round_idx is done: its final state is ``state``."""
        i, t = st.node, st.round_idx
        self._final[(i, t)] = state
        self._final_rounds[i].append(t)  # a node's operations complete in plan order
        self._rounds[t].finished += 1
        self._log_step(st)

    def _on_evaluated(self, t: int, reply: Reply[Evaluation]) -> None:
        r, log, when = self._rounds[t], self.log, self.plan.round_end_s(t)
        for i, ev in reply.nodes.items():
            for key, value in ev.metrics.items():
                log.add(t, i, f"eval_{key}", value, when)
            if i != NETWORK:
                r.node_metrics[i] = ev.metrics
        if reply.nodes and NETWORK not in reply.nodes and len(r.node_metrics) == self.n:
            nodes = [r.node_metrics[i] for i in sorted(r.node_metrics)]  # replies come in any order
            for key in ("acc", "f1", "local_acc", "local_f1"):  # the mean over nodes
                if all(key in m for m in nodes):
                    mean = float(np.mean([m[key] for m in nodes]))
                    log.add(t, NETWORK, f"mean_node_{key}", mean, when)

    # ------------------------------------------------------------------ rounds

    def _state_at(self, i: int, t: int) -> Part:
        """Node i's state after its latest round <= t (round 0: its initial state)."""
        for r in reversed(self._final_rounds[i]):
            if r <= t:
                return self._final[(i, r)]
        raise KeyError(f"node {i} holds no state of round {t} or before")

    def _log_round(self, t: int) -> None:
        """Network rows of round t; its evaluations are submitted (they come back later)."""
        r, log, n = self._rounds[t], self.log, self.n
        when = self.plan.round_end_s(t)
        last = t == self.plan.last_round
        measure = t % self.cfg.eval.metrics_every == 0 or last
        evaluate = t % self.cfg.eval.every == 0 or last
        t0 = time.perf_counter()
        after_parts = [self._state_at(i, t) for i in range(n)]
        after = None
        if measure:
            before_parts = [self._trained.get((i, t), after_parts[i]) for i in range(n)]
            both = self.hosts.fetch(before_parts + after_parts)  # each object fetched once
            before, after = both[:n], both[n:]
            for key, value in consensus_metrics(after).items():
                log.add(t, NETWORK, key, value, when)
            for key, value in average_drift(before, after).items():
                log.add(t, NETWORK, key, value, when)
        log.add(t, NETWORK, "virtual_s", when, when)
        if r.losses:
            log.add(t, NETWORK, "train_loss", float(np.mean(r.losses)), when)
        average = self.cfg.eval.network_average and self.cfg.eval.on != "local"
        if evaluate and average and after is None:
            after = self.hosts.fetch(after_parts)
        r.metrics_s = time.perf_counter() - t0
        r.logged_at = time.perf_counter()
        if evaluate:
            r.eval_started_at = r.logged_at
            for k, block in enumerate(self.hosts.blocks):
                states = {i: after_parts[i] for i in block}
                self._inflight[self.hosts.evaluate(k, t, states)] = ("eval", t)
                r.evals_pending += 1
            if average:
                ticket = self.hosts.evaluate_adapter(t, network_average(after))
                self._inflight[ticket] = ("eval", t)
                r.evals_pending += 1
        self._forget_round(t)

    def _forget_round(self, t: int) -> None:
        """After round t's rows: drop the values no later operation or row can need (round t's
        trained states, and every state older than its node's latest one up to round t unless
        a rejoin still has to read it). A host puts the states of one call as one object,
        alive while any of its parts is referenced, so the store holds about n states times
        the spread in rounds between the slowest and fastest node, however long the run."""
        for i, rounds in self._final_rounds.items():
            self._trained.pop((i, t), None)
            while len(rounds) >= 2 and rounds[1] <= t:
                key = (i, rounds.popleft())
                if self._readers[("state", *key)] > 0:
                    self._retired.add(key)
                else:
                    del self._final[key]

    def _close_round(self, t: int) -> None:
        """Round t is logged and evaluated: its phase times, then flush."""
        r, now, when = self._rounds[t], time.perf_counter(), self.plan.round_end_s(t)
        if self.barrier:
            started = r.started_at if r.started_at is not None else r.logged_at
            trained = r.trained_at if r.trained_at is not None else started
            combined = r.combined_at if r.combined_at is not None else trained
            phases = {
                "train_s": trained - started,
                "exchange_s": r.fetch_max_s,
                "combine_s": max(0.0, combined - trained - r.fetch_max_s),
                "metrics_s": r.metrics_s,
                "eval_s": now - r.eval_started_at if r.eval_started_at is not None else 0.0,
                "round_wall_s": now - started,
            }
        else:
            phases = {
                "train_s": r.busy["train"],
                "exchange_s": r.busy["fetch"],
                "combine_s": r.busy["combine"],
                "metrics_s": r.metrics_s,
                "eval_s": r.busy["eval"],
                "round_wall_s": r.logged_at - self._last_logged_at,
            }
            self._last_logged_at = r.logged_at
        for key, value in phases.items():
            self.log.add(t, NETWORK, key, value, when)
        self.log.flush()
        del self._rounds[t]
        self._slowest_round_s = max(self._slowest_round_s, phases["round_wall_s"])

    # ------------------------------------------------------------------ rows

    def _log_step(self, st: Step) -> None:
        """Per-node virtual-clock facts of one node-round: idle time, drops, staleness."""
        log, t, i, when = self.log, st.round_idx, st.node, st.combine_s
        others = [rc for rc in st.inbox if rc.sender != i]
        log.add(t, i, "idle_s", st.idle_s, when)
        log.add(t, i, "dropped", st.dropped, when)
        log.add(t, i, "max_lag_rounds", st.max_lag_rounds, when)
        log.add(t, i, "received", len(others), when)
        if others:
            rounds = [t - rc.sender_round for rc in others]
            seconds = [st.combine_s - rc.sent_s for rc in others]
            log.add(t, i, "staleness_rounds", float(np.mean(rounds)), when)
            log.add(t, i, "staleness_s", float(np.mean(seconds)), when)

    def _log_setup(self) -> None:
        """Round-0 facts: spectral gap, set-up time, shard overlap, label histograms."""
        log = self.log
        log.add(0, NETWORK, "spectral_gap", self.prep.spectral_gap, 0.0)
        log.add(0, NETWORK, "setup_s", self.setup_s, 0.0)
        if self.prep.overlap is not None:  # data.samples_per_node: shards may overlap
            o = self.prep.overlap
            log.add(0, NETWORK, "shard_overlap", o.overlap, 0.0)
            log.add(0, NETWORK, "sample_copies", o.copies, 0.0)
            log.add(0, NETWORK, "pool_coverage", o.coverage, 0.0)
        if self.cfg.model.ranks or self.cfg.model.rank_tiers:  # heterogeneous ranks
            ranks = {i: node_rank(self.cfg.model, self.cfg.seed, i) for i in range(self.n)}
            log.add_nodes(0, "rank", ranks, 0.0)
        for c, name in enumerate(self.prep.class_names):
            counts = {i: float(self.prep.histogram[i, c]) for i in range(self.n)}
            log.add_nodes(0, f"label_count:{name}", counts, 0.0)
        log.flush()
        self._setup_logged = True
        self._last_logged_at = time.perf_counter()  # round 1's wall time starts with the run

    def _progress(self) -> dict[str, str]:
        latest = self.log.latest
        post = {
            "cons": f"{latest.get('product_consensus', float('nan')):.2e}",
            "loss": f"{latest.get('train_loss', float('nan')):.3f}",
        }
        if "mean_node_acc" in latest:
            post["acc"] = f"{latest['mean_node_acc']:.3f}"
        return post


__all__ = ["BARRIER_MODES", "Executor"]
