"""The bare-compute floor of a round: the same local steps as the simulator, without Ray.

A :class:`FloorWorker` is a spawned process holding one :class:`~decaf_ray.node.Host` (plain
torch) and a share of the nodes. ``train_round`` runs one round of local steps on every worker
at once and returns the wall time until the slowest is done. Nothing is exchanged: this is the
compute a simulated round cannot go below. The benchmark compares the simulator with the faster
of two layouts (:func:`floor_layouts`): one process with all the threads, or one single-threaded
process per core, each training its block of nodes one after another.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import replace

from decaf_ray.data import Shard
from decaf_ray.node import Host, HostSpec, RunSpec


def _serve(conn, spec: HostSpec, run: RunSpec, shards: dict[int, Shard], eval_set: Shard) -> None:
    """Worker loop: build the host once, then answer ("train", round) until ("stop",)."""
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
        conn.send(time.perf_counter() - t0)
    conn.close()


class FloorWorker:
    """One spawned process that trains its nodes on request."""

    def __init__(
        self, spec: HostSpec, run: RunSpec, shards: dict[int, Shard], eval_set: Shard
    ) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child, spec, run, shards, eval_set), daemon=True
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
    ) -> None:
        self.name = name
        self.workers = [
            FloorWorker(spec, run, {i: shards[i] for i in block}, eval_set) for block in blocks
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
