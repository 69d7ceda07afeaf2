"""The driver's view of its hosts: a :class:`HostGroup` of calls that return :class:`Ticket` s.

The executor never touches Ray. It asks a host group to train these nodes for round t,
combine these inboxes, evaluate these states, and to wait until any call is done; each answer
is a typed :class:`~decaf_ray.node.service.Reply`. Two groups implement the calls: Ray actors
(:class:`decaf_ray.engine.cluster.RayHostGroup`, the default) and plain objects in this process
(:class:`decaf_ray.engine.local.LocalHostGroup`, for fast tests of the executor). Both share
everything here; they differ only in how a call is made, awaited and read.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import reduce
from operator import add
from typing import Any

import numpy as np

from decaf_ray.algorithms import Adapter
from decaf_ray.config import RunConfig
from decaf_ray.data import Shard
from decaf_ray.node import Combined, Evaluation, Inboxes, Part, Published, Reply, RunSpec
from decaf_ray.node.measure import average_adapter


class HostError(RuntimeError):
    """A host failed; the message names what it was doing, the round and the host's nodes.

    ``lost``: the host itself is gone or hung (its process died, or it stopped answering),
    as opposed to an error raised by the code it ran; a run can recover from a lost host by
    restarting its hosts from a checkpoint. ``folder``: the run's folder, set by the runner.
    """

    def __init__(self, message: str, lost: bool = False) -> None:
        super().__init__(message)
        self.lost = lost
        self.folder = None


@dataclass(frozen=True, eq=False)
class Ticket:
    """A call in flight: what the group waits on, and what to name if it fails."""

    handle: Any  # the backend's future (a Ray ObjectRef, or a finished local call)
    what: str  # "local training", "combine", ...
    round_idx: int
    nodes: tuple[int, ...]


def assign_nodes(n: int, n_hosts: int) -> list[list[int]]:
    """Contiguous, near-equal blocks of node ids, one per host."""
    return [list(map(int, b)) for b in np.array_split(np.arange(n), n_hosts) if len(b)]


def plan_hosts(cfg: RunConfig, n: int, cpus: float) -> list[list[int]]:
    """Nodes per host: ``nodes_per_actor`` if set, else one host per CPU slot of ``cpus``."""
    per = cfg.cluster.nodes_per_actor
    if per is None:
        slots = max(1, int(cpus // cfg.cluster.threads_per_host))
        per = math.ceil(n / slots)
    return assign_nodes(n, math.ceil(n / per))


class HostGroup(ABC):
    """Hosts ``0..len(blocks)-1``; host k carries the nodes ``blocks[k]``."""

    errors: tuple[type[BaseException], ...] = (Exception,)  # what a failed call raises
    lost: tuple[type[BaseException], ...] = ()  # of which: the host process is gone
    # calls run while the driver goes on (False: each runs to the end when it is made, so
    # nothing can overlap the driver's work and the executor keeps rounds strictly apart)
    concurrent: bool = True

    def __init__(self, blocks: list[list[int]]) -> None:
        self.blocks = blocks
        self.host_of = {i: k for k, block in enumerate(blocks) for i in block}

    # ---------------------------------------------------------------- the backend's three verbs

    @abstractmethod
    def _call(self, host: int, method: str, *args: Any) -> Any:
        """Start ``HostService.<method>(*args)`` on host ``host``; return its future."""

    @abstractmethod
    def _ready(self, handles: list[Any], timeout_s: float | None = None) -> list[Any]:
        """Block until at least one of ``handles`` is done (or ``timeout_s`` passed: then
        none may be); return those done."""

    @abstractmethod
    def _get(self, handle: Any) -> Any:
        """The value of a finished call (raising what the call raised)."""

    @abstractmethod
    def _share(self, value: Any) -> Any:
        """``value`` as an argument that many calls can take without copying it each time."""

    @abstractmethod
    def fetch(self, parts: Sequence[Part]) -> list[Adapter]:
        """The adapters ``parts`` name, on the driver."""

    @abstractmethod
    def put(self, value: Any) -> Part:
        """Store ``value`` (e.g. fedavg's server average); the Part naming it whole."""

    # ---------------------------------------------------------------- calls

    def _ticket(self, what: str, round_idx: int, nodes: Sequence[int], handle: Any) -> Ticket:
        return Ticket(handle, what, round_idx, tuple(nodes))

    def train(self, host: int, round_idx: int, nodes: list[int], sleep_s: float = 0.0) -> Ticket:
        """Local steps of round ``round_idx`` for ``nodes`` of ``host``: a Reply[Published]."""
        handle = self._call(host, "train", round_idx, nodes, sleep_s)
        return self._ticket("local training", round_idx, nodes, handle)

    def combine(self, host: int, round_idx: int, inboxes: Inboxes) -> Ticket:
        """Each node combines its inbox of neighbours' messages: a Reply[Combined]."""
        handle = self._call(host, "combine", inboxes, round_idx)
        return self._ticket("combine", round_idx, list(inboxes), handle)

    def rejoin(self, host: int, round_idx: int, inboxes: Inboxes) -> Ticket:
        """Each node starts over from its inbox of neighbours' states: a Reply[Combined]."""
        handle = self._call(host, "rejoin", inboxes)
        return self._ticket("rejoin", round_idx, list(inboxes), handle)

    def evaluate(self, host: int, round_idx: int, states: dict[int, Part]) -> Ticket:
        """Held-out evaluation of the given states of ``host``'s nodes: a Reply[Evaluation]."""
        handle = self._call(host, "evaluate", states)
        return self._ticket("evaluation", round_idx, list(states), handle)

    def measure(
        self,
        host: int,
        round_idx: int,
        after: dict[int, Part],
        ref: Part,
        rank: int,
        before: dict[int, Part] | None = None,
    ) -> Ticket:
        """``host``'s sums over its nodes for round ``round_idx``'s network metrics (node
        -1 of a Reply[NetworkSums]); see :meth:`HostService.measure`."""
        handle = self._call(host, "measure", after, ref, rank, before)
        return self._ticket("network metrics", round_idx, list(after), handle)

    def evaluate_adapter(self, round_idx: int, adapter: Adapter) -> Ticket:
        """Held-out evaluation of one model given whole (on host 0): an Evaluation."""
        handle = self._call(0, "evaluate_adapter", adapter)
        return self._ticket("evaluation of the network average", round_idx, (), handle)

    def adapter_files(self, host: int, named: dict[str, Any]) -> Ticket:
        """peft adapter folders of ``named`` adapters (Parts or whole Adapters), as
        {name: {file name: bytes}} made by ``host``: the driver writes them."""
        handle = self._call(host, "adapter_files", named)
        return self._ticket("saving adapters", 0, (), handle)

    def average(self, states: dict[int, Part], rank: int) -> Adapter:
        """The network-average adapter of ``states`` (each node's, on its own host), from
        the hosts' sums: only the reference state (the first node's) comes to the driver."""
        ref = states[min(states)]
        tickets = [
            self.measure(k, 0, {i: states[i] for i in block if i in states}, ref, rank)
            for k, block in enumerate(self.blocks)
            if any(i in states for i in block)
        ]
        total = reduce(add, (reply.nodes[-1] for reply in self.gather(tickets)))
        return average_adapter(total, self.fetch([ref])[0], rank)

    def wait(self, tickets: Sequence[Ticket], timeout_s: float | None = None) -> list[Ticket]:
        """Block until at least one of ``tickets`` is done; return every one that is. No
        answer within ``timeout_s``: the hosts are hung, a lost-host :class:`HostError`."""
        by_handle = {t.handle: t for t in tickets}
        done = self._ready([t.handle for t in tickets], timeout_s)
        if not done:
            first = min(tickets, key=lambda t: t.round_idx)
            raise HostError(
                f"no host answered for {timeout_s:.0f} s ({first.what} of round "
                f"{first.round_idx} on the host of nodes {list(first.nodes)} among them): "
                "hung hosts (cluster.call_timeout_s sets the limit)",
                lost=True,
            )
        ready = set(done)
        return [by_handle[h] for h in by_handle if h in ready]  # in the order of ``tickets``

    def result(self, ticket: Ticket) -> Any:
        """The reply of a finished call; a failure becomes one :class:`HostError`."""
        try:
            return self._get(ticket.handle)
        except self.errors as exc:
            where = f" on the host of nodes {list(ticket.nodes)}" if ticket.nodes else ""
            lost = isinstance(exc, self.lost)
            cause = str(exc).strip() or type(exc).__name__
            if lost:  # the first line says it (the rest is Ray's advice on debugging)
                cause = cause.splitlines()[0]
            raise HostError(
                f"{ticket.what} failed in round {ticket.round_idx}{where}: {cause}", lost
            ) from exc

    def gather(self, tickets: Sequence[Ticket]) -> list[Any]:
        return [self.result(t) for t in tickets]

    # ---------------------------------------------------------------- set-up

    def _on_every_host(self, what: str, method: str, args=lambda block: ()) -> list[Any]:
        """Call ``method`` on every host (``args(block)`` for its arguments); the replies."""
        return self.gather(
            [
                self._ticket(what, 0, block, self._call(k, method, *args(block)))
                for k, block in enumerate(self.blocks)
            ]
        )

    def setup(
        self,
        run: RunSpec,
        shards: dict[int, Shard],
        eval_set: Shard,
        local_evals: dict[int, Shard] | None = None,
    ) -> None:
        """Give every host its nodes' shards (and own test splits) and the held-out set."""
        shared = self._share(eval_set)

        def args(block: list[int]) -> tuple:
            local = {i: local_evals[i] for i in block} if local_evals else None
            return run, {i: shards[i] for i in block}, shared, local

        self._on_every_host("host set-up", "setup", args)

    def placement(self) -> list[dict[str, Any]]:
        """Where each host runs, with its nodes (for placement.json)."""
        where = self._on_every_host("placement", "where")
        return [{"nodes": block, **w} for block, w in zip(self.blocks, where)]

    def message_bytes(self) -> list[list[int]]:
        """Size of each node's message in each round of the algorithm's cycle, in node order
        (nodes of different ranks send different sizes; rolora alternates B and A)."""
        sizes = {
            i: b
            for reply in self._on_every_host("message size", "message_bytes")
            for i, b in reply.items()
        }
        return [[int(b) for b in sizes[i]] for i in range(len(sizes))]

    def snapshot(self) -> dict[int, tuple[dict, dict]]:
        """Every node's private state (parameters, optimizer, sampler), for a checkpoint."""
        replies = self._on_every_host("checkpoint", "snapshot", lambda block: (block,))
        return {i: snap for snaps in replies for i, snap in snaps.items()}

    def snapshots(self, nodes: int = 256) -> Iterator[dict[int, tuple[dict, dict]]]:
        """:meth:`snapshot` a few at a time: each host's nodes in runs of at most ``nodes``,
        each asked for only when the caller takes the previous one (a checkpoint writes it
        and lets it go first), so the driver holds one run of nodes, not all n."""
        for k, block in enumerate(self.blocks):
            for start in range(0, len(block), nodes):
                ids = block[start : start + nodes]
                yield self.result(
                    self._ticket("checkpoint", 0, ids, self._call(k, "snapshot", ids))
                )

    def restore(self, snapshots: dict[int, tuple[dict, dict]]) -> None:
        """Set every node back to its state in ``snapshots`` (after :meth:`setup`)."""
        self._on_every_host(
            "restoring a checkpoint", "restore", lambda block: ({i: snapshots[i] for i in block},)
        )

    def base_snapshot(self) -> dict:
        """What is merged into the base model (FLoRA; {} if nothing), for a checkpoint: host
        0's, as every host's is the same (:mod:`decaf_ray.node.merged`)."""
        ticket = self._ticket("checkpoint", 0, self.blocks[0], self._call(0, "base_snapshot"))
        return self.result(ticket)

    def restore_base(self, tensors: dict) -> None:
        """Set every host's base model to ``tensors`` (a :meth:`base_snapshot`)."""
        self._on_every_host("restoring a checkpoint", "restore_base", lambda block: (tensors,))

    def states(self) -> dict[int, Part]:
        """Every node's current state (before training: its initial one)."""
        replies = self._on_every_host("initial states", "states", lambda block: (block,))
        return {i: part for parts in replies for i, part in parts.items()}


__all__ = [
    "Combined",
    "Evaluation",
    "HostError",
    "HostGroup",
    "Published",
    "Reply",
    "Ticket",
    "assign_nodes",
    "plan_hosts",
]
