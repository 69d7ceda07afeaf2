"""The bare-compute floor of a round: the same local steps as the simulator, without Ray.

A :class:`FloorWorker` is a spawned process holding one :class:`~decaf_ray.node.Host` (plain
torch) and a share of the nodes. ``train_round`` runs one round of local steps on every worker
at once and returns the wall time until the slowest is done. Nothing is exchanged: this is the
compute a simulated round cannot go below. The benchmark compares the simulator with the faster
of two layouts (:func:`floor_layouts`): one process with all the threads, or one single-threaded
process per core, each training its block of nodes one after another.

A floor *with maths* (:func:`maths_floor`) also does, after the local steps, what the
algorithm itself computes in a round: every node's combine of its inbox (the algorithm's
``combine_all``, as a host runs it) and the sums of the network metrics over its nodes
(:func:`~decaf_ray.node.measure.network_sums`, before and after). A neighbour outside the
worker's block is stood in for by a node of the block, so the maths has the shapes and the
work of the real round without any exchange. The simulator over this floor is the cost of the
engine alone (Ray, the driver, scheduling, transfers), apart from the algorithm's own compute.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import replace

from decaf_ray.data import Shard
from decaf_ray.node import Host, HostSpec, RunSpec

# node -> its inbox as (weight, node of the same block); see maths_floor
Inboxes = dict[int, list[tuple[float, int]]]


def _serve(
    conn,
    spec: HostSpec,
    run: RunSpec,
    shards: dict[int, Shard],
    eval_set: Shard,
    inboxes: Inboxes | None = None,
) -> None:
    """Worker loop: build the host once, then answer ("train", round) until ("stop",).
    With ``inboxes``, each round also combines and sums the metrics (:func:`_maths`)."""
    host = Host(spec)
    host.setup(run, shards, eval_set)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            break
        _, round_idx = msg
        t0 = time.perf_counter()
        host.train(round_idx)
        if inboxes:
            _maths(host, inboxes, round_idx)
        conn.send(time.perf_counter() - t0)
    conn.close()


def _maths(host: Host, inboxes: Inboxes, round_idx: int) -> None:
    """A round's own maths on this worker's nodes: the combine of each node's inbox, then the
    network metric sums over the nodes' states after it (and before, for the drift)."""
    from decaf_ray.node.measure import network_sums

    before = {i: host.adapter(i) for i in inboxes}
    combined = host.combine(
        {i: [(w, before[j]) for w, j in inbox] for i, inbox in inboxes.items()}, round_idx
    )
    after = [combined[i].adapter for i in inboxes]
    ref = after[0]
    rank = max(a.A[m].shape[0] for a in after for m in a.modules) if ref.modules else 0
    network_sums(after, ref, rank, list(before.values()))


class FloorWorker:
    """One spawned process that trains its nodes on request."""

    def __init__(
        self,
        spec: HostSpec,
        run: RunSpec,
        shards: dict[int, Shard],
        eval_set: Shard,
        inboxes: Inboxes | None = None,
    ) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child, spec, run, shards, eval_set, inboxes), daemon=True
        )
        self.process.start()
        child.close()

    def wait_ready(self) -> None:
        if self._conn.recv() != "ready":
            raise RuntimeError("floor worker failed to start")

    def start_round(self, round_idx: int) -> None:
        self._conn.send(("train", round_idx))

    def finish_round(self) -> float:
        return float(self._conn.recv())

    def stop(self) -> None:
        self._conn.send(("stop",))
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


class Floor:
    """A layout of floor workers; ``train_round`` returns the wall seconds of one round."""

    def __init__(
        self,
        name: str,
        spec: HostSpec,
        run: RunSpec,
        blocks: list[list[int]],
        shards: dict[int, Shard],
        eval_set: Shard,
        inboxes: Inboxes | None = None,
    ) -> None:
        self.name = name
        self.workers = [
            FloorWorker(
                spec,
                run,
                {i: shards[i] for i in block},
                eval_set,
                {i: inboxes[i] for i in block} if inboxes else None,
            )
            for block in blocks
        ]
        for w in self.workers:
            w.wait_ready()

    def train_round(self, round_idx: int) -> float:
        t0 = time.perf_counter()
        for w in self.workers:
            w.start_round(round_idx)
        for w in self.workers:
            w.finish_round()
        return time.perf_counter() - t0

    def pids(self) -> list[int]:
        return [int(w.process.pid) for w in self.workers]

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


def floor_layouts(
    spec: HostSpec,
    run: RunSpec,
    shards: dict[int, Shard],
    eval_set: Shard,
    blocks: list[list[int]],
) -> list[Floor]:
    """The two layouts: one process with one thread per block (core), and one single-threaded
    process per block, each training its block of nodes one after another.

    Pass the simulator's own host blocks so both sides split the nodes alike.
    """
    cores = len(blocks)
    nodes = sorted(shards)
    one = Floor(
        f"1 proc x {cores} threads", replace(spec, threads=cores), run, [nodes], shards, eval_set
    )
    per_core = Floor(
        f"{cores} procs x 1 thread", replace(spec, threads=1), run, blocks, shards, eval_set
    )
    return [one, per_core]


def block_inboxes(Pi, blocks: list[list[int]]) -> Inboxes:
    """Each node's inbox (row i of the mixing matrix ``Pi``, dense or scipy.sparse) with
    every neighbour outside the node's block replaced by a node of the block that is not
    already in the inbox (so the combine sees as many distinct messages as in the round)."""
    import numpy as np
    import scipy.sparse as sp

    rows = sp.csr_array(Pi)
    out: Inboxes = {}
    for block in blocks:
        inside = set(block)
        for i in block:
            lo, hi = rows.indptr[i], rows.indptr[i + 1]
            cols, weights = rows.indices[lo:hi], rows.data[lo:hi]
            taken = {int(j) for j in cols if int(j) in inside}
            spare = (j for j in block if j not in taken)
            inbox = []
            for j, w in zip(cols.tolist(), np.asarray(weights, dtype=float).tolist()):
                if w == 0.0:
                    continue
                inbox.append((w, j if j in inside else next(spare, i)))
            out[i] = inbox
    return out


def maths_floor(
    spec: HostSpec,
    run: RunSpec,
    shards: dict[int, Shard],
    eval_set: Shard,
    blocks: list[list[int]],
    Pi,
) -> Floor:
    """One single-threaded process per block that trains its nodes and then does the round's
    own maths (see the module's docstring): the floor of a round with the algorithm in it."""
    return Floor(
        f"{len(blocks)} procs x 1 thread + maths",
        replace(spec, threads=1),
        run,
        blocks,
        shards,
        eval_set,
        block_inboxes(Pi, blocks),
    )
