"""The coordinator: runs rounds over the host actors and logs what happened.

A round is: local training on every host at once -> exchange and combine (each host fetches
its nodes' neighbour messages from the object store) -> consensus metrics -> evaluation every
k rounds. *Who exchanges with whom, with which weight and at what virtual time* comes from a
plan on the virtual clock (:mod:`decaf_ray.virtual`, modes ``sync`` and ``deadline``; the
asynchronous modes run in :mod:`decaf_ray.event_coordinator`); the math lives in the
algorithm. The driver never routes adapters between hosts, except fedavg's server step.
"""

from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from decaf_ray import cluster
from decaf_ray.algorithms import make_algorithm
from decaf_ray.config import RunConfig
from decaf_ray.consensus import consensus_metrics, network_average
from decaf_ray.drift import average_drift
from decaf_ray.host import HostSpec, RunSpec
from decaf_ray.log import NETWORK, MetricsLog
from decaf_ray.prepare import Prepared
from decaf_ray.virtual import Step, build_world, make_plan


def assign_nodes(n: int, n_hosts: int) -> list[list[int]]:
    """Contiguous, near-equal blocks of node ids, one per host."""
    return [list(map(int, b)) for b in np.array_split(np.arange(n), n_hosts) if len(b)]


def plan_hosts(cfg: RunConfig, n: int) -> list[list[int]]:
    """Nodes per host: ``nodes_per_actor`` if set, else one host per available CPU slot."""
    per = cfg.cluster.nodes_per_actor
    if per is None:
        slots = max(1, int(cluster.cluster_cpus() // cfg.cluster.threads_per_host))
        per = math.ceil(n / slots)
    return assign_nodes(n, math.ceil(n / per))


def learning_rate(cfg: RunConfig, round_idx: int) -> float:
    """lr for round ``round_idx`` (1-based): constant, or cosine decay to 0 over the run."""
    if cfg.train.lr_schedule == "cosine":
        progress = (round_idx - 1) / max(1, cfg.train.rounds)
        return cfg.train.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.train.lr


class Simulation:
    """One run of one config on a set of warm hosts."""

    def __init__(
        self, cfg: RunConfig, prep: Prepared, pool: cluster.HostPool, log: MetricsLog
    ) -> None:
        self.cfg, self.prep, self.log = cfg, prep, log
        self.algorithm = make_algorithm(cfg.algorithm)
        self.blocks = plan_hosts(cfg, prep.n)
        spec = HostSpec(
            cfg.model, prep.num_labels, cfg.cluster.threads_per_host, cfg.cluster.device
        )
        t0 = time.perf_counter()
        self.hosts = pool.get(spec, len(self.blocks), cfg.cluster.gpus_per_host)
        run = RunSpec(cfg.algorithm, cfg.train, cfg.eval.batch_size, cfg.model.same_init, cfg.seed)
        eval_ref = cluster.put(prep.eval_set)
        setups = [
            h.setup_from.remote(run, cluster.put({i: prep.shards[i] for i in block}), eval_ref)
            for h, block in zip(self.hosts, self.blocks)
        ]
        cluster.gather(setups, "host setup", 0, self.blocks)
        self.placement = cluster.get([h.where.remote() for h in self.hosts])
        self.setup_s = time.perf_counter() - t0
        self.sizes = np.array([len(prep.shards[i]) for i in range(prep.n)])
        self.states: dict[int, cluster.Part] = {}  # node -> its latest adapter in the store
        self.host_of = {i: h for h, block in zip(self.hosts, self.blocks) for i in block}
        self.world = build_world(cfg, prep.Pi)
        self.message_bytes = float(cluster.get(self.hosts[0].message_bytes.remote()))
        self.plan = make_plan(self.world, cfg.schedule.mode, self.message_bytes, cfg.schedule)

    def state_refs(self, nodes: range | list[int]) -> list[cluster.Part]:
        """Parts naming the nodes' latest adapters (a node that never trained: its initial one)."""
        for i in nodes:
            if i not in self.states:
                self.states[i] = cluster.Part(self.host_of[i].adapter.remote(i))
        return [self.states[i] for i in nodes]

    def log_steps(self, steps: list[Step]) -> None:
        """Per-node virtual-clock facts of one round: idle time, drops, staleness of messages."""
        for st in steps:
            self.log.virtual_s = st.combine_s
            others = [rc for rc in st.inbox if rc.sender != st.node]
            self.log.add(st.round_idx, st.node, "idle_s", st.idle_s)
            self.log.add(st.round_idx, st.node, "dropped", st.dropped)
            self.log.add(st.round_idx, st.node, "max_lag_rounds", st.max_lag_rounds)
            self.log.add(st.round_idx, st.node, "received", len(others))
            if others:
                rounds = [st.round_idx - rc.sender_round for rc in others]
                seconds = [st.combine_s - rc.sent_s for rc in others]
                self.log.add(st.round_idx, st.node, "staleness_rounds", float(np.mean(rounds)))
                self.log.add(st.round_idx, st.node, "staleness_s", float(np.mean(seconds)))

    # ------------------------------------------------------------------ one round

    def run_round(self, t: int) -> None:
        log, n = self.log, self.prep.n
        round_t0 = time.perf_counter()
        steps = {i: self.plan.steps[(i, t)] for i in range(n) if (i, t) in self.plan.steps}
        log.virtual_s = self.plan.round_end_s(t) if steps else log.virtual_s
        self._rejoin(t, [st for st in steps.values() if st.rejoin])
        # 1. local training, all hosts at once (all present nodes)
        t0 = time.perf_counter()
        lr = learning_rate(self.cfg, t)
        calls, blocks = [], []
        for h, block in zip(self.hosts, self.blocks):
            ids = [i for i in block if i in steps]
            if ids:
                calls.append(h.train_publish.remote(t, lr, None if ids == block else ids))
                blocks.append(block)
        results = cluster.gather(calls, "local training", t, blocks)
        trained = {i: r for res in results for i, r in res.items()}
        train_s = time.perf_counter() - t0
        log.add_nodes(t, "train_loss", {i: r["loss"] for i, r in trained.items()})
        log.add_nodes(t, "node_train_s", {i: r["train_s"] for i, r in trained.items()})
        self.states.update({i: r["state"] for i, r in trained.items()})
        measure = t % self.cfg.eval.metrics_every == 0 or t == self.plan.last_round
        evaluate = t % self.cfg.eval.every == 0 or t == self.plan.last_round
        before = cluster.get_parts(self.state_refs(range(n))) if measure else None

        # 2. exchange + combine
        t0 = time.perf_counter()
        fetch_s = 0.0
        bytes_sent = {i: 0.0 for i in range(n)}
        if self.algorithm.communicates:
            plan, bytes_sent = self._plan(t, trained, steps)
            outs = self._combine_on_hosts(plan, "combine", t)
            fetch_s = max((o["fetch_s"] for o in outs), default=0.0)
            for o in outs:
                for i, r in o["nodes"].items():
                    self.states[i] = r["state"]
                    for key, value in r["stats"].items():
                        log.add(t, i, key, value)
        exchange_s = time.perf_counter() - t0
        log.add_nodes(t, "bytes_sent", bytes_sent)

        # 3. consensus metrics from the adapters the hosts published
        t0 = time.perf_counter()
        adapters = cluster.get_parts(self.state_refs(range(n))) if measure or evaluate else None
        if measure:
            for key, value in consensus_metrics(adapters).items():
                log.add(t, NETWORK, key, value)
            for key, value in average_drift(before, adapters).items():
                log.add(t, NETWORK, key, value)
        log.add(t, NETWORK, "virtual_s", log.virtual_s)
        self.log_steps(list(steps.values()))
        log.virtual_s = self.plan.round_end_s(t) if steps else log.virtual_s
        metrics_s = time.perf_counter() - t0

        # 4. evaluation every k rounds
        eval_s = 0.0
        if evaluate:
            t0 = time.perf_counter()
            self._evaluate(t, adapters)
            eval_s = time.perf_counter() - t0

        for key, value in (
            ("train_s", train_s),
            ("exchange_s", fetch_s),
            ("combine_s", exchange_s - fetch_s),
            ("metrics_s", metrics_s),
            ("eval_s", eval_s),
            ("round_wall_s", time.perf_counter() - round_t0),
        ):
            log.add(t, NETWORK, key, value)
        if trained:
            log.add(t, NETWORK, "train_loss", float(np.mean([r["loss"] for r in trained.values()])))
        log.flush()

    def _combine_on_hosts(self, plan: dict[int, list], what: str, t: int) -> list[dict]:
        """Send each host the inboxes (node -> [(weight, part)]) of its nodes; gather replies."""
        pairs = [(h, [i for i in b if i in plan]) for h, b in zip(self.hosts, self.blocks)]
        pairs = [(h, ids) for h, ids in pairs if ids]
        return cluster.gather(
            [h.combine_refs.remote({i: plan[i] for i in ids}) for h, ids in pairs],
            what,
            t,
            [ids for _, ids in pairs],
        )

    def _rejoin(self, t: int, steps: list[Step]) -> None:
        """Nodes back from churn with ``rejoin: neighbours`` start from their neighbours' mix."""
        if not steps:
            return
        self.state_refs(range(self.prep.n))
        plan = {st.node: [(rc.weight, self.states[rc.sender]) for rc in st.rejoin] for st in steps}
        for o in self._combine_on_hosts(plan, "rejoin", t):
            for i, r in o["nodes"].items():
                self.states[i] = r["state"]

    def _plan(self, t: int, trained: dict, steps: dict[int, Step]) -> tuple[dict, dict]:
        """Who receives which message with which weight, and bytes each node sends."""
        n = self.prep.n
        if self.algorithm.uses_server:
            messages = cluster.get_parts([trained[i]["message"] for i in range(n)])
            avg = cluster.put_part(self.algorithm.aggregate(messages, self.sizes))
            self.log.add(
                t, NETWORK, "interference", self.algorithm.server_interference(messages, self.sizes)
            )
            plan = {i: [(1.0, avg)] for i in range(n)}
            return plan, {i: float(trained[i]["message_bytes"]) for i in range(n)}
        plan, sent = {}, {i: 0.0 for i in range(n)}
        for i, st in steps.items():
            plan[i] = [(rc.weight, trained[rc.sender]["message"]) for rc in st.inbox]
            sent[i] = float(trained[i]["message_bytes"] * st.sent)
        return plan, sent

    def _evaluate(self, t: int, adapters: list) -> None:
        results = cluster.gather(
            [h.evaluate.remote() for h in self.hosts], "evaluation", t, self.blocks
        )
        per_node = {i: r for res in results for i, r in res.items()}
        self.log.add_nodes(t, "eval_loss", {i: r[0] for i, r in per_node.items()})
        self.log.add_nodes(t, "eval_acc", {i: r[1] for i, r in per_node.items()})
        self.log.add(t, NETWORK, "mean_node_acc", float(np.mean([r[1] for r in per_node.values()])))
        if self.cfg.eval.network_average:
            loss, acc = cluster.get(
                self.hosts[0].evaluate_adapter.remote(network_average(adapters))
            )
            self.log.add(t, NETWORK, "eval_loss", loss)
            self.log.add(t, NETWORK, "eval_acc", acc)

    # ------------------------------------------------------------------ whole run

    def run(self) -> None:
        cfg = self.cfg
        self.log_setup()
        bar = tqdm(
            range(1, self.plan.last_round + 1),
            desc=cfg.name,
            unit="round",
            disable=not cfg.output.progress,
            leave=True,
        )
        for t in bar:
            self.run_round(t)
            bar.set_postfix(self.progress())
        bar.close()

    def progress(self) -> dict[str, str]:
        latest = self.log.latest
        post = {
            "cons": f"{latest.get('product_consensus', float('nan')):.2e}",
            "loss": f"{latest.get('train_loss', float('nan')):.3f}",
        }
        if "mean_node_acc" in latest:
            post["acc"] = f"{latest['mean_node_acc']:.3f}"
        return post

    def log_setup(self) -> None:
        """Round-0 facts: spectral gap, set-up time, label histograms."""
        self.log.add(0, NETWORK, "spectral_gap", self.prep.spectral_gap)
        self.log.add(0, NETWORK, "setup_s", self.setup_s)
        for c, name in enumerate(self.prep.class_names):
            self.log.add_nodes(
                0,
                f"label_count:{name}",
                {i: float(self.prep.histogram[i, c]) for i in range(self.prep.n)},
            )
        self.log.flush()
