"""The asynchronous coordinator (modes ``async`` and ``bounded``): a dataflow over the plan.

The virtual-clock plan (:func:`decaf_ray.virtual.plan_async`) fixes, before anything runs,
every node's sequence of operations: [rejoin], train round t, combine round t with named
messages (sender, sender's round, weight). This module executes that plan on the hosts as
fast as Ray allows, with no barrier: an operation is submitted as soon as the messages it
needs exist, calls are batched per host (``train_publish(t, lr, node_ids)``,
``combine_refs({node: plan})``), and the driver reacts to completions with ``ray.wait``.
A node's operations reach its host in plan order, which Ray keeps for calls from one caller,
so a slow host holds back only the nodes whose inboxes name its messages.

Results therefore never depend on wall-clock timing. Network rows of round t describe the
states {X_i(t)}, each node's after its own round t (a node absent in round t: its latest
state), logged once every node is past round t, at virtual time max_i combine_s(i, t).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from decaf_ray import cluster
from decaf_ray.consensus import consensus_metrics, network_average
from decaf_ray.coordinator import Simulation, learning_rate
from decaf_ray.drift import average_drift
from decaf_ray.log import NETWORK
from decaf_ray.virtual import Step


class EventSimulation(Simulation):
    """One asynchronous run: the set-up and plan of :class:`Simulation`, no barrier rounds."""

    def run(self) -> None:
        cfg, n, T = self.cfg, self.prep.n, self.plan.last_round
        self.log_setup()
        self._accs: dict[int, dict[int, float]] = {}
        self._losses: dict[int, list[float]] = defaultdict(list)  # round -> nodes' losses
        self._keys_of_round: dict[int, list[tuple[int, int]]] = defaultdict(list)
        # readers of each message: a ref is dropped once its last reader is submitted
        self._readers: Counter = Counter()
        for key, st in self.plan.steps.items():
            self._keys_of_round[key[1]].append(key)
            if self.algorithm.communicates:
                self._readers.update((rc.sender, rc.sender_round) for rc in st.inbox + st.rejoin)
        self._final_rounds: dict[int, deque] = {i: deque() for i in range(n)}
        host_index = {i: k for k, block in enumerate(self.blocks) for i in block}
        ops: dict[int, deque] = {i: deque() for i in range(n)}
        for (i, _), st in sorted(self.plan.steps.items(), key=lambda kv: kv[0][1]):
            if st.rejoin:
                ops[i].append(("rejoin", st))
            ops[i].append(("train", st))
            if self.algorithm.communicates:
                ops[i].append(("combine", st))
        # initial states first: they queue on each host ahead of any training
        self.initial = {i: cluster.Part(self.host_of[i].adapter.remote(i)) for i in range(n)}
        self.message: dict[tuple[int, int], Any] = {}
        self.trained: dict[tuple[int, int], Any] = {}  # state after local steps
        self.final: dict[tuple[int, int], Any] = {}  # state after combining
        inflight: dict[Any, tuple[str, Any]] = {}
        next_round, bar = 1, tqdm(total=T, desc=cfg.name, disable=not cfg.output.progress)
        self._last_done = time.perf_counter()
        while any(ops.values()) or inflight:
            while self._submit_ready(ops, host_index, inflight):
                pass  # one operation per node per pass keeps each node's order on its host
            if not inflight:
                raise RuntimeError("asynchronous plan is stuck: no operation can start")
            done, _ = cluster.wait_any(list(inflight))
            for ref in done:
                self._complete(ref, *inflight.pop(ref))
            while next_round <= T and self._round_done(next_round):
                self._log_round(next_round, inflight)
                self._forget(next_round)
                next_round += 1
                bar.update(1)
                bar.set_postfix(self.progress())
        bar.close()
        self.log.flush()

    def _submit_ready(self, ops: dict, host_index: dict, inflight: dict) -> bool:
        """Submit the next operation of every node that can start; True if any was submitted."""
        sleep = self.cfg.schedule.debug_sleep_s
        trains: dict[tuple[int, int], list[int]] = defaultdict(list)
        combines: dict[int, dict[int, tuple]] = defaultdict(dict)
        for i in range(self.prep.n):
            if not ops[i]:
                continue
            kind, st = ops[i][0]
            if kind == "train":
                trains[(host_index[i], st.round_idx)].append(i)
            else:
                receipts = st.rejoin if kind == "rejoin" else st.inbox
                keys = [(rc.sender, rc.sender_round) for rc in receipts]
                if any(key not in self.message for key in keys):
                    continue
                plan = [(rc.weight, self.message[key]) for rc, key in zip(receipts, keys)]
                combines[host_index[i]][i] = (kind, st, plan)
                for key in keys:  # the submitted call holds the ref from here on
                    self._readers[key] -= 1
                    if self._readers[key] == 0:
                        del self.message[key]
            ops[i].popleft()
        for (k, t), ids in sorted(trains.items()):
            lr = learning_rate(self.cfg, t)
            pause = sum(float(sleep.get(i, 0.0)) for i in ids)
            ref = self.hosts[k].train_publish.remote(t, lr, ids, pause)
            inflight[ref] = ("train", {i: self.plan.steps[(i, t)] for i in ids})
        for k, entries in sorted(combines.items()):
            ref = self.hosts[k].combine_refs.remote({i: e[2] for i, e in entries.items()})
            inflight[ref] = ("combine", {i: (e[0], e[1]) for i, e in entries.items()})
        return bool(trains or combines)

    # ------------------------------------------------------------------ completions

    def _complete(self, ref: Any, kind: str, payload: Any) -> None:
        try:
            result = cluster.get(ref)
        except cluster.RayError as exc:  # a host failed: name its nodes
            nodes = sorted(payload) if isinstance(payload, dict) else payload
            raise cluster.HostError(f"{kind} failed on the host of nodes {nodes}: {exc}") from exc
        log = self.log
        if kind == "train":
            for i, r in result.items():
                st: Step = payload[i]
                key = (i, st.round_idx)
                self.trained[key] = r["state"]
                if self._readers[key] > 0:
                    self.message[key] = r["message"]
                if not self.algorithm.communicates:
                    self._finish(key, r["state"])
                log.virtual_s = st.trained_s
                self._losses[st.round_idx].append(r["loss"])
                log.add(st.round_idx, i, "train_loss", r["loss"])
                log.add(st.round_idx, i, "node_train_s", r["train_s"])
                log.add(st.round_idx, i, "bytes_sent", float(r["message_bytes"] * st.sent))
                if not self.algorithm.communicates:
                    self.log_steps([st])
        elif kind == "combine":
            for i, r in result["nodes"].items():
                what, st = payload[i]
                if what == "rejoin":
                    continue
                self._finish((i, st.round_idx), r["state"])
                log.virtual_s = st.combine_s
                for key, value in r["stats"].items():
                    log.add(st.round_idx, i, key, value)
                self.log_steps([st])
        elif kind == "eval":
            t, who = payload
            loss, acc = result
            log.virtual_s = self.plan.round_end_s(t)
            log.add(t, who, "eval_loss", loss)
            log.add(t, who, "eval_acc", acc)
            if who != NETWORK:
                self._accs.setdefault(t, {})[who] = acc
                if len(self._accs[t]) == self.prep.n:
                    log.add(
                        t, NETWORK, "mean_node_acc", float(np.mean(list(self._accs[t].values())))
                    )

    # ------------------------------------------------------------------ rounds

    def _state_at(self, i: int, t: int, table: dict) -> Any:
        """Ref of node i's state at round t from ``table``, else its latest earlier state."""
        for r in range(t, 0, -1):
            if (i, r) in self.plan.steps:
                return table[(i, r)]
        return self.initial[i]

    def _finish(self, key: tuple[int, int], state: Any) -> None:
        self.final[key] = state
        self._final_rounds[key[0]].append(key[1])  # a node's operations complete in order

    def _round_done(self, t: int) -> bool:
        """Every node present in round t has combined (earlier rounds are done already)."""
        return all(key in self.final for key in self._keys_of_round[t])

    def _forget(self, t: int) -> None:
        """After round t's rows: drop the refs no later operation or row can need (round t's
        trained states, and every node's final states older than its latest one up to round
        t). A host puts the states of one call as one object, alive while any of its parts is
        referenced, so the store holds about n states times the spread in rounds between the
        slowest and fastest node, however long the run."""
        for i, rounds in self._final_rounds.items():
            self.trained.pop((i, t), None)
            while len(rounds) >= 2 and rounds[1] <= t:
                del self.final[(i, rounds.popleft())]

    def _log_round(self, t: int, inflight: dict) -> None:
        n, log = self.prep.n, self.log
        log.virtual_s = self.plan.round_end_s(t) or log.virtual_s
        last = t == self.plan.last_round
        if t % self.cfg.eval.metrics_every == 0 or last:
            after = cluster.get_parts([self._state_at(i, t, self.final) for i in range(n)])
            before = cluster.get_parts(
                [
                    self.trained[(i, t)]
                    if (i, t) in self.plan.steps
                    else self._state_at(i, t, self.final)
                    for i in range(n)
                ]
            )
            for key, value in consensus_metrics(after).items():
                log.add(t, NETWORK, key, value)
            for key, value in average_drift(before, after).items():
                log.add(t, NETWORK, key, value)
        log.add(t, NETWORK, "virtual_s", log.virtual_s)
        # rounds overlap here: the wall time between two rounds' completions is the throughput
        now = time.perf_counter()
        log.add(t, NETWORK, "round_wall_s", now - self._last_done)
        self._last_done = now
        losses = self._losses.pop(t, [])
        if losses:
            log.add(t, NETWORK, "train_loss", float(np.mean(losses)))
        if t % self.cfg.eval.every == 0 or t == self.plan.last_round:
            for i in range(n):
                ref = self.host_of[i].evaluate_part.remote(self._state_at(i, t, self.final))
                inflight[ref] = ("eval", (t, i))
            if self.cfg.eval.network_average:
                after = cluster.get_parts([self._state_at(i, t, self.final) for i in range(n)])
                ref = self.hosts[0].evaluate_adapter.remote(network_average(after))
                inflight[ref] = ("eval", (t, NETWORK))
        log.flush()
