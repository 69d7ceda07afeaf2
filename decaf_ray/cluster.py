"""The one module that makes hosts into Ray actors, places them, and moves refs between them.

- :func:`connect` starts a local Ray (or joins a cluster at an address).
- :class:`HostActor` is :class:`~decaf_ray.host.Host` plus object-store plumbing: after local
  training a host puts its nodes' adapters in the object store (one object per call; a
  :class:`Part` names one node's entry); combining fetches the neighbours' messages straight
  from the store. The driver only passes references.
- :class:`HostPool` keeps hosts (and their loaded base model) warm across runs of a sweep and
  across tests; hosts are spread over the cluster's machines and pinned to GPUs when any exist.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import ray

from decaf_ray.host import Host, HostSpec, RunSpec, Shard

RayError = ray.exceptions.RayError


class HostError(RuntimeError):
    """A host actor failed; the message names the hosts' nodes and the round."""


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure Ray is up; return True when this call started it (and should stop it)."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file for local runs
    kwargs: dict[str, Any] = dict(
        include_dashboard=False, log_to_driver=True, configure_logging=False
    )
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def shutdown() -> None:
    ray.shutdown()


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


@dataclass(frozen=True)
class Part:
    """One entry of an object in the store: ``ray.get(ref)[key]`` (``key`` None: the object).

    A host puts the adapters of all the nodes of one call as one object: each ``ray.put``
    costs 0.5-3 ms here whatever its size, so one per node per phase was a visible share of
    a round; one per host is not.
    """

    ref: Any
    key: int | None = None


def put_parts(values: dict[int, Any]) -> dict[int, Part]:
    """Put ``values`` (key -> value) as one object; a :class:`Part` for each key."""
    ref = ray.put(values)
    return {key: Part(ref, key) for key in values}


def get_parts(parts: list[Part]) -> list[Any]:
    """The values ``parts`` name, fetching each distinct object once."""
    refs = list(dict.fromkeys(p.ref for p in parts))
    objects = dict(zip(refs, ray.get(refs)))
    return [objects[p.ref] if p.key is None else objects[p.ref][p.key] for p in parts]


def put_part(value: Any) -> Part:
    """Put ``value`` as an object of its own; the :class:`Part` that names it whole."""
    return Part(ray.put(value))


class _RayHost(Host):
    """Host methods that speak in object references."""

    def where(self) -> dict[str, Any]:
        """Which Ray node and device this host runs on."""
        ctx = ray.get_runtime_context()
        return {
            "ray_node": ctx.get_node_id(),
            "device": str(self.device),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "pid": os.getpid(),
        }

    def setup_from(self, run: RunSpec, shards: dict[int, Shard], eval_set: Shard) -> list[int]:
        return self.setup(run, shards, eval_set)

    def message_bytes(self) -> int:
        """Size of one node's message (the same for every node and round of a run)."""
        return self.algorithm.message(self.adapter(min(self.nodes))).nbytes

    def train_publish(
        self, round_idx: int, lr: float, node_ids: list[int] | None = None, sleep_s: float = 0.0
    ) -> dict[int, dict[str, Any]]:
        """Train nodes (default all); put their adapters (and messages, if different) in the
        store as one object for the whole call, each node's entry named by a :class:`Part`.

        ``sleep_s`` > 0 first sleeps for real (schedule.debug_sleep_s): a genuinely slow host.
        """
        if sleep_s > 0:
            time.sleep(sleep_s)
        results = self.train(round_idx, lr, node_ids)
        states = put_parts({i: res.adapter for i, res in results.items()})
        same = all(res.message is res.adapter for res in results.values())
        messages = states if same else put_parts({i: r.message for i, r in results.items()})
        return {
            i: {
                "loss": res.loss,
                "train_s": res.train_s,
                "state": states[i],
                "message": messages[i],
                "message_bytes": res.message.nbytes,
            }
            for i, res in results.items()
        }

    def combine_refs(self, plan: dict[int, list[tuple[float, Part]]]) -> dict[str, Any]:
        """Fetch the messages named in ``plan`` (node -> [(weight, part)]) and combine."""
        t0 = time.perf_counter()
        parts = [part for entries in plan.values() for _, part in entries]
        values = iter(get_parts(parts))
        inboxes = {i: [(w, next(values)) for w, _ in entries] for i, entries in plan.items()}
        fetch_s = time.perf_counter() - t0
        results = self.combine(inboxes)
        states = put_parts({i: res.adapter for i, res in results.items()})
        nodes = {
            i: {"stats": res.stats, "combine_s": res.combine_s, "state": states[i]}
            for i, res in results.items()
        }
        return {"fetch_s": fetch_s, "nodes": nodes}

    def evaluate_part(self, part: Part) -> tuple[float, float]:
        """(loss, accuracy) of the adapter ``part`` names."""
        return self.evaluate_adapter(get_parts([part])[0])


HostActor = ray.remote(_RayHost)


class HostPool:
    """Warm host actors, keyed by their spec; asks for more only when a run needs them."""

    def __init__(self) -> None:
        self._hosts: dict[tuple, list[Any]] = {}

    def get(self, spec: HostSpec, count: int, gpus_per_host: float | None = None) -> list[Any]:
        cpus = min(float(spec.threads), max(cluster_cpus() / count, 0.01))
        gpus = gpus_per_host
        if gpus is None:
            total = cluster_gpus() if spec.device != "cpu" else 0.0
            gpus = min(1.0, total / count) if total else 0.0
        key = (spec, round(cpus, 4), gpus)
        if key not in self._hosts:
            self.clear()  # runs are sequential: free the CPUs/GPUs of hosts of another shape
        hosts = self._hosts.setdefault(key, [])
        while len(hosts) < count:
            options: dict[str, Any] = {"num_cpus": cpus, "scheduling_strategy": "SPREAD"}
            if gpus:
                options["num_gpus"] = gpus
            hosts.append(HostActor.options(**options).remote(spec))
        return hosts[:count]

    def clear(self) -> None:
        for hosts in self._hosts.values():
            for h in hosts:
                ray.kill(h)
        self._hosts = {}


def gather(refs: list[Any], what: str, round_idx: int, host_nodes: list[list[int]]) -> list[Any]:
    """``ray.get`` the results of one call per host, turning a failure into a HostError."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        for k, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayError as inner:
                raise HostError(
                    f"{what} failed in round {round_idx} on the host of nodes {host_nodes[k]}: "
                    f"{inner}"
                ) from exc
        raise HostError(f"{what} failed in round {round_idx}: {exc}") from exc


def get(refs: Any) -> Any:
    return ray.get(refs)


def wait_any(refs: list[Any]) -> tuple[list[Any], list[Any]]:
    """Block until at least one of ``refs`` is done; return (done, still pending)."""
    return ray.wait(refs, num_returns=1)


def put(value: Any) -> Any:
    return ray.put(value)
