"""What a host says and hears: the typed records that cross the driver-host boundary, and the
:class:`HostService` that answers calls in them.

A host's results live in an object store; a :class:`Part` names one node's entry of one stored
object. The store is a small :class:`Store` protocol with two implementations: Ray's object
store (:mod:`decaf_ray.engine.cluster`, the default) and a dictionary in this process
(:mod:`decaf_ray.engine.local`, for fast tests). :class:`HostService` wraps a
:class:`~decaf_ray.node.host.Host` and a store; it is the class that becomes a Ray actor.
Every call returns a frozen :class:`Reply` whose ``nodes`` hold one record per node.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from decaf_ray.algorithms import Adapter, unpack_adapter
from decaf_ray.data import Shard
from decaf_ray.node.host import Host, HostSpec, RunSpec
from decaf_ray.node.measure import NetworkSums, network_sums

T = TypeVar("T")


@dataclass(frozen=True)
class Part:
    """One entry of an object in the store: ``store[ref][key]`` (``key`` None: the object).

    A host puts the adapters of all the nodes of one call as one object: each ``ray.put``
    costs 0.5-3 ms here whatever its size, so one per node per phase was a visible share of
    a round; one per host is not.
    """

    ref: Any
    key: int | None = None


class Store(Protocol):
    """Where a host puts what it publishes and finds what it is sent."""

    def put_parts(self, values: dict[int, Any]) -> dict[int, Part]:
        """Put ``values`` (key -> value) as one object; a :class:`Part` for each key."""

    def get_parts(self, parts: list[Part]) -> list[Any]:
        """The values ``parts`` name, fetching each distinct object once."""

    def where(self) -> dict[str, Any]:
        """Where this process runs (machine id, accelerator ids)."""


@dataclass(frozen=True)
class Published:
    """One node's round of local training, as its host published it."""

    loss: float  # mean loss of the local steps
    train_s: float  # wall seconds of the node's local steps
    state: Part  # the node's whole trainable state after its local steps
    message: Part  # what it sends its neighbours (``state`` unless the algorithm sends less)
    message_bytes: int


@dataclass(frozen=True)
class Combined:
    """One node's combine (or rejoin): its new state and the algorithm's statistics."""

    state: Part
    stats: dict[str, float]  # e.g. interference, tsvd_tail (logged as metrics of the node)
    combine_s: float


@dataclass(frozen=True)
class Evaluation:
    """A model's held-out metrics, named as logged without the ``eval_`` prefix: ``loss``
    always; ``acc`` and ``f1`` (macro) for classification; ``ppl`` for causal LMs."""

    metrics: dict[str, float]


@dataclass(frozen=True)
class Reply(Generic[T]):
    """A host's answer to one call: a record per node, and where its time went."""

    nodes: dict[int, T]
    busy_s: float  # wall seconds the host spent on the call
    fetch_s: float = 0.0  # of which: fetching the call's inputs from the store


Inboxes = dict[int, list[tuple[float, Part]]]  # node -> [(weight, part)], the node's own included


class HostService:
    """A :class:`Host` that speaks in :class:`Part` references and typed replies."""

    def __init__(self, spec: HostSpec, store: Store) -> None:
        self.host = Host(spec)
        self.store = store

    def setup(
        self,
        run: RunSpec,
        shards: dict[int, Shard],
        eval_set: Shard,
        local_evals: dict[int, Shard] | None = None,
    ) -> list[int]:
        return self.host.setup(run, shards, eval_set, local_evals)

    def where(self) -> dict[str, Any]:
        """Which machine and device this host runs on (recorded in placement.json)."""
        return {**self.store.where(), "device": str(self.host.device), "pid": os.getpid()}

    def message_bytes(self) -> dict[int, list[int]]:
        """Size of each of this host's nodes' messages in each round of the algorithm's cycle
        (:meth:`Host.message_bytes`)."""
        return self.host.message_bytes()

    def states(self, node_ids: list[int]) -> dict[int, Part]:
        """The nodes' current states, put as one object."""
        return self.store.put_parts({i: self.host.adapter(i) for i in node_ids})

    def train(self, round_idx: int, node_ids: list[int], sleep_s: float = 0.0) -> Reply[Published]:
        """Local steps of round ``round_idx`` on ``node_ids``; states (and messages, when they
        differ) put as one object each. ``sleep_s`` > 0 first sleeps for real
        (schedule.debug_sleep_s: a genuinely slow host)."""
        t0 = time.perf_counter()
        if sleep_s > 0:
            time.sleep(sleep_s)
        results = self.host.train(round_idx, node_ids)
        states = self.store.put_parts({i: res.adapter for i, res in results.items()})
        same = all(res.message is res.adapter for res in results.values())
        messages = (
            states if same else self.store.put_parts({i: r.message for i, r in results.items()})
        )
        nodes = {
            i: Published(res.loss, res.train_s, states[i], messages[i], res.message.nbytes)
            for i, res in results.items()
        }
        return Reply(nodes, time.perf_counter() - t0)

    def combine(self, inboxes: Inboxes, round_idx: int | None = None) -> Reply[Combined]:
        """Fetch the messages named in ``inboxes`` and combine each node's (of round
        ``round_idx``: FLoRA's hosts merge that round's update once)."""
        return self._combine(inboxes, as_messages=False, round_idx=round_idx)

    def rejoin(self, inboxes: Inboxes) -> Reply[Combined]:
        """Like :meth:`combine`, but ``inboxes`` name neighbours' *states*: each is first cut
        to the message its owner would send (dLoRA-FA sends no A), then combined."""
        return self._combine(inboxes, as_messages=True)

    def _combine(
        self, inboxes: Inboxes, as_messages: bool, round_idx: int | None = None
    ) -> Reply[Combined]:
        t0 = time.perf_counter()
        values = iter(self.store.get_parts([p for entries in inboxes.values() for _, p in entries]))
        message = self.host.algorithm.message
        fetched = {  # a rejoin cuts states to messages; packed messages are unpacked
            i: [
                (w, message(v) if as_messages else unpack_adapter(v))
                for (w, _), v in zip(entries, values)
            ]
            for i, entries in inboxes.items()
        }
        fetch_s = time.perf_counter() - t0
        results = self.host.combine(fetched, round_idx)
        states = self.store.put_parts({i: res.adapter for i, res in results.items()})
        nodes = {i: Combined(states[i], res.stats, res.combine_s) for i, res in results.items()}
        return Reply(nodes, time.perf_counter() - t0, fetch_s)

    def evaluate(self, states: dict[int, Part]) -> Reply[Evaluation]:
        """Held-out loss and accuracy of each node's model as given by its state."""
        t0 = time.perf_counter()
        adapters = self.store.get_parts(list(states.values()))
        nodes = {i: Evaluation(self.host.evaluate_node(i, a)) for i, a in zip(states, adapters)}
        return Reply(nodes, time.perf_counter() - t0)

    def measure(
        self, after: dict[int, Part], ref: Part, rank: int, before: dict[int, Part] | None = None
    ) -> Reply[NetworkSums]:
        """This host's share of a round's network metrics: sums over its nodes' states
        ``after`` (and ``before`` their combine), shifted by the shared reference state ``ref``
        and padded to the network's widest ``rank`` (see :mod:`decaf_ray.node.measure`).
        The reply holds the sums under node id -1."""
        t0 = time.perf_counter()
        parts = [*after.values(), ref, *(before or {}).values()]
        values = [unpack_adapter(v) for v in self.store.get_parts(parts)]
        fetch_s = time.perf_counter() - t0
        m = len(after)
        sums = network_sums(values[:m], values[m], rank, values[m + 1 :] if before else None)
        return Reply({-1: sums}, time.perf_counter() - t0, fetch_s)

    def adapter_files(self, named: dict[str, Part | Adapter]) -> dict[str, dict[str, bytes]]:
        """Each named adapter (a stored state, or one given whole) as a peft adapter
        folder's files."""
        parts = {k: v for k, v in named.items() if isinstance(v, Part)}
        fetched = dict(zip(parts, self.store.get_parts(list(parts.values()))))
        return {k: self.host.adapter_files(fetched.get(k, v)) for k, v in named.items()}

    def snapshot(self, node_ids: list[int]) -> dict[int, tuple[dict, dict]]:
        """The nodes' private state for a checkpoint (see :meth:`Host.snapshot`)."""
        return self.host.snapshot(node_ids)

    def restore(self, snapshots: dict[int, tuple[dict, dict]]) -> None:
        self.host.restore(snapshots)

    def base_snapshot(self) -> dict:
        """What is merged into the host's base model (see :meth:`Host.base_snapshot`)."""
        return self.host.base_snapshot()

    def restore_base(self, tensors: dict) -> None:
        self.host.restore_base(tensors)

    def evaluate_adapter(self, adapter: Adapter) -> Reply[Evaluation]:
        """Held-out metrics of the model given as ``adapter`` (any rank), under node id -1
        (the whole network, as in the metrics)."""
        t0 = time.perf_counter()
        evaluation = Evaluation(self.host.evaluate_adapter(adapter))
        return Reply({-1: evaluation}, time.perf_counter() - t0)
