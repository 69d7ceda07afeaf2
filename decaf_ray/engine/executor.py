"""The one executor of a plan, for every schedule mode.

The plan (:mod:`decaf_ray.virtual`) fixes, before anything runs, each node's operations and
their inputs: [rejoin from named neighbour states], train round t, combine round t with named
messages (sender, sender's round, weight). The executor runs them on a
:class:`~decaf_ray.engine.hosts.HostGroup`: an operation is submitted as soon as its inputs
exist, calls are batched per host and round, and the driver reacts to completions. A node's
operations reach its host in plan order (Ray keeps the order of calls from one caller). Two
submission policies share everything else:

- **barrier** (``sync``, ``deadline``): nothing of round t + 1 is submitted before every
  combine of round t is back, and a round's combines wait until all of its local training
  is back, so the phases of a round run in lock-step; round t + 1's local steps queue on the
  hosts behind round t's metric sums and evaluations, so the driver's own work overlaps the
  hosts'. ``train_s``, ``exchange_s``, ``combine_s``, ``metrics_s`` and ``eval_s`` are wall
  seconds of those phases (``exchange_s``: the slowest host's fetch of its inbox); a round
  counts from when the previous one closed, so the rounds tile the wall clock.
- **dataflow** (``async``, ``bounded``): no barrier; a slow host holds back only the nodes
  whose inboxes name its messages. Rounds overlap, so the phase times are sums of the hosts'
  busy seconds for that round's calls, and ``round_wall_s`` is the time between two rounds
  being logged.

The plan streams (:class:`~decaf_ray.virtual.PlanStream`): the executor takes steps from the
planner a window of rounds ahead of the last closed round (``window_rounds``), and more when
nothing else can start, so the driver holds the steps of a few rounds, never n x T. A value
(message, state) is forgotten once no step taken reads it any more *and* the planner says
that no step still to come can (settled).

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
from functools import reduce
from operator import add

import numpy as np

from decaf_ray.algorithms import Adapter, make_algorithm, unpack_adapter
from decaf_ray.config import RunConfig
from decaf_ray.engine import stopping
from decaf_ray.engine.hosts import HostGroup, Ticket
from decaf_ray.engine.log import NETWORK, MetricsLog
from decaf_ray.engine.progress import Progress
from decaf_ray.node import Combined, Evaluation, Part, Published, Reply
from decaf_ray.node.measure import NetworkSums, average_adapter, network_metrics
from decaf_ray.node.state import node_rank
from decaf_ray.prepare import Prepared
from decaf_ray.virtual import PlanStream, Step, build_world

BARRIER_MODES = ("sync", "deadline")


@dataclass(frozen=True)
class _Op:
    kind: str  # "rejoin" | "train" | "combine"
    step: Step


@dataclass
class _Round:
    """What the executor knows of one round while it runs (wall times from perf_counter)."""

    steps: int | None = None  # node-rounds in the plan; None until the planner settled the round
    nodes: list[int] = field(default_factory=list)  # of the steps taken so far
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
    measured_at: float | None = None  # every host's metric sums are in (and handled)
    evals_pending: int = 0  # evaluations and hosts' metric sums not back yet
    measure: bool = False  # log consensus and drift rows from the sums
    average: bool = False  # evaluate the network average from the sums
    ref: Part | None = None  # node 0's state: the shift of every host's sums
    sums: dict[int, NetworkSums] = field(default_factory=dict)  # host -> its sums


class Executor:
    """Runs one config's plan on a set-up host group, logging as it goes."""

    def __init__(
        self,
        cfg: RunConfig,
        prep: Prepared,
        hosts: HostGroup,
        log: MetricsLog,
        setup_s: float = float("nan"),
        window_rounds: int = 2,
    ) -> None:
        self.cfg, self.prep, self.hosts, self.log = cfg, prep, hosts, log
        self.setup_s = setup_s
        self.n = prep.n
        self.algorithm = make_algorithm(cfg.algorithm)
        self.barrier = cfg.schedule.mode in BARRIER_MODES
        self.sizes = np.array([len(prep.shards[i]) for i in range(self.n)])
        self.rank = max(node_rank(cfg.model, cfg.seed, i) for i in range(self.n))  # widest
        self.world = build_world(cfg, prep.Pi)
        self.message_bytes = hosts.message_bytes()
        self.plan = PlanStream(self.world, cfg.schedule.mode, self.message_bytes, cfg.schedule)
        self.window_rounds = window_rounds  # plan rounds <= closed + this one ahead
        self._ops: dict[int, deque[_Op]] = {i: deque() for i in range(self.n)}
        self._consumed: Counter = Counter()  # operations submitted, per node
        self._skip: Counter = Counter()  # operations a resumed run submitted before, per node
        self._readers: Counter = Counter()  # pending readers among the operations taken
        self._steps: dict[tuple[int, int], Step] = {}  # taken, not finished
        self._rounds: dict[int, _Round] = {}
        self._awaiting: set[tuple] = set()  # stored, no reader taken; the planner may name it
        self._counted = 0  # rounds <= this one have their node count (_Round.steps)
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
        self._closed_at: float | None = None  # wall time the last round closed
        self._setup_logged = False
        self._slowest_round_s = 0.0

    def _take(self) -> None:
        """Queue the steps the planner made since the last call, count the readers of the
        values they name, and forget the values that are now settled without a reader."""
        steps = self.plan.take()
        for st in steps:
            self._register(st)
        self._counted = max(self._counted, self._closed)
        while self._counted < min(self.plan.settled_round, self.plan.last_round):
            self._counted += 1
            r = self._rounds.setdefault(self._counted, _Round())
            r.steps = len(r.nodes)
            self._round_known(self._counted)
        if steps or self.plan.exhausted:  # at the end every value is settled
            self._settle()

    def _settle(self) -> None:
        """Forget the awaiting values that the planner now says no step to come reads."""
        for key in [k for k in self._awaiting if self._readers[k] or self.plan.settled(*k)]:
            self._awaiting.discard(key)
            if not self._readers[key]:  # else its last reader releases it again
                self._forget_value(key)

    def _register(self, st: Step) -> None:
        """A node's operations in plan order: [rejoin], train, combine; a resumed run skips
        the ones it submitted before the checkpoint."""
        talks, i, t = self.algorithm.communicates, st.node, st.round_idx
        ops = [_Op("rejoin", st)] if st.rejoin and talks else []
        ops.append(_Op("train", st))
        if talks:
            ops.append(_Op("combine", st))
        if t > self._closed:
            self._rounds.setdefault(t, _Round()).nodes.append(i)
        skip = min(self._skip[i], len(ops))
        self._skip[i] -= skip
        if skip == len(ops):
            return  # done before the checkpoint
        self._steps[(i, t)] = st
        for op in ops[skip:]:
            self._ops[i].append(op)
            if op.kind == "rejoin":
                self._readers.update(("state", rc.sender, rc.sender_round) for rc in st.rejoin)
            elif op.kind == "combine" and self.algorithm.uses_server:
                self._readers[("server", t)] += 1
            elif op.kind == "combine":
                self._readers.update(("message", rc.sender, rc.sender_round) for rc in st.inbox)

    def _pull(self, until_round: int) -> None:
        """Plan every step of rounds <= ``until_round`` and take them."""
        if self.plan.settled_round < until_round and not self.plan.exhausted:
            self.plan.pull(until_round)
            self._take()

    def _is_last(self, t: int) -> bool:
        last = self.plan.is_last(t)
        self._take()
        return last

    def _round_known(self, t: int) -> None:
        """Round t's node count is known: the round may already be trained or finished."""
        r = self._rounds[t]
        if not r.steps:
            return  # a round nobody runs is complete at once, with no phase times
        if r.trained == r.steps and r.trained_at is None:
            self._round_trained(t)
        if r.finished == r.steps and r.combined_at is None:
            r.combined_at = r.trained_at

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
        self._logged, self._closed = book["logged"], book["closed"]
        for i, count in book["consumed"].items():
            self._skip[int(i)] = self._consumed[int(i)] = count
        while any(self._skip.values()) and not self.plan.exhausted:  # replay the planner
            self._pull(self.plan.settled_round + 1)
        put = {kind: {k: self.hosts.put(a) for k, a in v.items()} for kind, v in values.items()}
        self._final, self._trained, self._messages = put["states"], put["trained"], put["messages"]
        self._server = {t: part for (_, t), part in put["server"].items()}
        self._final_rounds = {int(i): deque(rs) for i, rs in book["final_rounds"].items()}
        self._retired = {tuple(key) for key in book["retired"]}
        self._awaiting = {("message", *k) for k in self._messages}
        self._awaiting |= {("state", *k) for k in self._retired}
        self._pull(self._closed + self.window_rounds)
        self._settle()
        now = time.perf_counter()
        for t, saved in book["rounds"].items():
            r = self._rounds[int(t)]
            r.trained, r.finished, r.losses = saved["trained"], saved["finished"], saved["losses"]
            r.node_metrics = {int(i): m for i, m in saved["node_metrics"].items()}
            r.started_at = now
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
        last = until_round if until_round is not None else self.cfg.train.rounds
        if not self._setup_logged:
            self._log_setup()
        every = self.cfg.checkpoint.every if checkpoint else 0
        total = min(last, self.plan.last_round)  # a bound until the planner knows the last round
        bar = Progress(self.cfg.name, total, self._closed, self.cfg.output.progress)
        try:
            while self._closed < min(last, self.plan.last_round):
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
        while self._closed < min(last, self.plan.last_round):
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
            if not self._inflight and not self.plan.exhausted:
                self._pull(self.plan.settled_round + 1)  # nothing can start: plan further
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
            self._advance(last, bar)  # a round closes before a later round's reply is seen

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
        if self.plan.known_last and bar.total > self.plan.last_round:
            bar.set_total(self.plan.last_round)  # a time budget ended the run early
        while self._closed < self._logged and not self._rounds[self._closed + 1].evals_pending:
            self._closed += 1
            self._close_round(self._closed)
            bar.update(self._progress())
            moved = True
        return moved

    def _complete_round(self, t: int) -> bool:
        r = self._rounds.get(t)
        return r is not None and r.finished == r.steps

    # ------------------------------------------------------------------ submission

    def _submit_ready(self, last: int) -> bool:
        """Submit every operation whose inputs exist; True if any was submitted."""
        # barrier: one round at a time; dataflow: whatever is ready (a round can need
        # messages of later rounds of faster nodes)
        self._pull(self._closed + self.window_rounds)
        gate = min(last, self._barrier_gate()) if self.barrier else self.plan.last_round
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

    def _barrier_gate(self) -> int:
        """The last round a barrier run may submit: the one after the last logged round.

        Its local steps need only the combined states, so they go to each host behind the
        logged round's metric sums and evaluations (a host runs its calls in order) and start
        as soon as that host is done with them, not once the driver has heard back from every
        host: the driver's share of a round overlaps the hosts' training. Not while the
        logged round's network average is still to be evaluated (it is submitted once the
        sums are in, and would queue behind the training), and never more than one round
        past the last closed one."""
        r = self._rounds.get(self._logged)
        if not self.hosts.concurrent or (r is not None and r.average and r.measured_at is None):
            return self._closed + 1
        return min(self._logged + 1, self._closed + 2)

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
        elif self.barrier and self._rounds[t].trained != self._rounds[t].steps:
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
                del self._readers[key]
                self._release(key)
        return list(zip(weights, parts))

    def _release(self, key: tuple) -> None:
        """No operation taken reads ``key`` any more: forget it, or wait until no step still to
        come can read it either (a server average is read in its own round only)."""
        if key[0] == "server" or self.plan.settled(*key):
            self._forget_value(key)
        else:
            self._awaiting.add(key)

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
        elif kind == "measure":
            self._on_measured(t, ticket, reply)
            r.evals_pending -= 1
        else:
            self._on_evaluated(t, reply)
            r.busy["eval"] += reply.busy_s
            r.evals_pending -= 1

    def _on_trained(self, t: int, reply: Reply[Published]) -> None:
        r, log = self._rounds[t], self.log
        talks, server = self.algorithm.communicates, self.algorithm.uses_server
        for i, pub in reply.nodes.items():
            st = self._steps[(i, t)]
            self._trained[(i, t)] = pub.state
            key = ("message", i, t)
            if server or self._readers[key] > 0 or not self.plan.settled(*key):
                self._messages[(i, t)] = pub.message
                if not server and self._readers[key] == 0:
                    self._awaiting.add(key)
            sent = 0.0 if not talks else pub.message_bytes * (1 if server else st.sent)
            log.add(t, i, "train_loss", pub.loss, st.trained_s)
            log.add(t, i, "node_train_s", pub.train_s, st.trained_s)
            log.add(t, i, "bytes_sent", float(sent), st.trained_s)
            r.losses.append(pub.loss)
            r.trained += 1
            if not talks:
                self._finish(st, pub.state)
        if r.trained == r.steps:
            self._round_trained(t)
        if r.finished == r.steps:
            r.combined_at = r.trained_at

    def _round_trained(self, t: int) -> None:
        """Every node of round t has trained (a server method's server then steps)."""
        self._rounds[t].trained_at = time.perf_counter()
        if self.algorithm.uses_server and self.algorithm.communicates:
            self._server_step(t)

    def _server_step(self, t: int) -> None:
        """A server method (fedavg...): the server aggregates the round's messages (weighted
        by shard size, as the method says)."""
        ids = sorted(self._rounds[t].nodes)
        packed = self.hosts.fetch([self._messages.pop((i, t)) for i in ids])
        messages = [unpack_adapter(m) for m in packed]
        sizes = self.sizes[ids]
        self._server[t] = self.hosts.put(self.algorithm.aggregate(messages, sizes))
        interference = self.algorithm.server_interference(messages, sizes)
        if interference is not None:  # None: the method averages no product
            self.log.add(t, NETWORK, "interference", interference, self.plan.round_end_s(t))

    def _on_combined(self, t: int, reply: Reply[Combined]) -> None:
        for i, c in reply.nodes.items():
            st = self._steps[(i, t)]
            for key, value in c.stats.items():
                self.log.add(t, i, key, value, st.combine_s)
            self._finish(st, c.state)
        r = self._rounds[t]
        if r.finished == r.steps:
            r.combined_at = time.perf_counter()

    def _finish(self, st: Step, state: Part) -> None:
        """Node st.node's round st.round_idx is done: its final state is ``state``."""
        i, t = st.node, st.round_idx
        del self._steps[(i, t)]
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
        """Network rows of round t: its virtual time and loss now; the consensus and drift
        rows, and the network average's evaluation, once the hosts' sums are back (each host
        sums its own nodes: no adapter comes to the driver). Its node evaluations are
        submitted too (they come back later)."""
        r, log, n = self._rounds[t], self.log, self.n
        when = self.plan.round_end_s(t)
        last = self._is_last(t)
        measure = t % self.cfg.eval.metrics_every == 0 or last
        evaluate = t % self.cfg.eval.every == 0 or last
        average = evaluate and self.cfg.eval.network_average and self.cfg.eval.on != "local"
        t0 = time.perf_counter()
        after_parts = [self._state_at(i, t) for i in range(n)]
        log.add(t, NETWORK, "virtual_s", when, when)
        if r.losses:
            log.add(t, NETWORK, "train_loss", float(np.mean(r.losses)), when)
        if measure or average:
            r.measure, r.average, r.ref = measure, average, after_parts[0]
            for k, block in enumerate(self.hosts.blocks):
                states = {i: after_parts[i] for i in block}
                before = None
                if measure:
                    before = {i: self._trained.get((i, t), after_parts[i]) for i in block}
                ticket = self.hosts.measure(k, t, states, r.ref, self.rank, before)
                self._inflight[ticket] = ("measure", t)
                r.evals_pending += 1
        r.metrics_s = time.perf_counter() - t0
        r.logged_at = time.perf_counter()
        if evaluate:
            r.eval_started_at = r.logged_at
            for k, block in enumerate(self.hosts.blocks):
                states = {i: after_parts[i] for i in block}
                self._inflight[self.hosts.evaluate(k, t, states)] = ("eval", t)
                r.evals_pending += 1
        self._forget_round(t)

    def _on_measured(self, t: int, ticket: Ticket, reply: Reply[NetworkSums]) -> None:
        """One host's sums of round t; with every host's in, the network rows (and the
        network average's evaluation)."""
        r = self._rounds[t]
        r.sums[self.hosts.host_of[ticket.nodes[0]]] = reply.nodes[NETWORK]
        r.busy["metrics"] += reply.busy_s
        if len(r.sums) < len(self.hosts.blocks):
            return
        t0 = time.perf_counter()
        when = self.plan.round_end_s(t)
        total = reduce(add, (r.sums[k] for k in sorted(r.sums)))  # host order: deterministic
        if r.measure:
            for key, value in network_metrics(total).items():
                self.log.add(t, NETWORK, key, value, when)
        if r.average:
            ref = self.hosts.fetch([r.ref])[0]
            ticket = self.hosts.evaluate_adapter(t, average_adapter(total, ref, self.rank))
            self._inflight[ticket] = ("eval", t)
            r.evals_pending += 1
        r.sums, r.ref = {}, None
        now = time.perf_counter()
        # barrier: wall seconds from the round's rows to its metrics; dataflow: busy seconds
        r.metrics_s += now - r.logged_at if self.barrier else r.busy["metrics"] + now - t0
        r.measured_at = now

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
                elif not self.plan.settled("state", *key):
                    self._retired.add(key)
                    self._awaiting.add(("state", *key))
                else:
                    del self._final[key]

    def _close_round(self, t: int) -> None:
        """Round t is logged and evaluated: its phase times, then flush."""
        r, now, when = self._rounds[t], time.perf_counter(), self.plan.round_end_s(t)
        if self.barrier:
            # a round starts when it was submitted or, if that was earlier (it overlapped the
            # previous round's metrics and evaluations), when the previous round closed: the
            # rounds tile the wall clock and each one's phases add up to it
            started = r.started_at if r.started_at is not None else r.logged_at
            started = max(started, self._closed_at or started)
            trained = max(r.trained_at or started, started)
            combined = max(r.combined_at or trained, trained)
            phases = {
                "train_s": trained - started,
                "exchange_s": r.fetch_max_s,
                "combine_s": max(0.0, combined - trained - r.fetch_max_s),
                "metrics_s": r.metrics_s,
                "eval_s": self._eval_wall_s(r, now),
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
        self._closed_at = now
        self.log.flush()
        del self._rounds[t]
        self.plan.forget_ends(t)
        self._slowest_round_s = max(self._slowest_round_s, phases["round_wall_s"])

    @staticmethod
    def _eval_wall_s(r: _Round, now: float) -> float:
        """Wall seconds of round r's evaluation, counted from when its metrics were done:
        a host runs its metric sums before its evaluations, so the two never overlap and
        the phases of a barrier round add up to its wall time (the rest: the driver's)."""
        if r.eval_started_at is None:
            return 0.0
        return now - max(r.eval_started_at, r.measured_at or r.eval_started_at)

    # ------------------------------------------------------------------ rows

    def _log_step(self, st: Step) -> None:
        """Per-node virtual-clock facts of one node-round: idle time, drops, staleness.

        The plan's inbox is the graph's; what a node really receives depends on the method:
        nothing for local training, the server's aggregate (one message, of this round, from a
        server that gets every message) for a server method, the neighbours' messages else."""
        log, t, i, when = self.log, st.round_idx, st.node, st.combine_s
        others = [rc for rc in st.inbox if rc.sender != i]
        received, dropped = len(others), st.dropped
        if not self.algorithm.communicates or self.algorithm.uses_server:
            others, dropped = [], 0
            received = 1 if self.algorithm.uses_server else 0
        log.add(t, i, "idle_s", st.idle_s, when)
        log.add(t, i, "dropped", dropped, when)
        log.add(t, i, "max_lag_rounds", st.max_lag_rounds, when)
        log.add(t, i, "received", received, when)
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
