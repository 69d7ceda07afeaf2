"""The one module that speaks Ray: start or join a cluster, make hosts into actors, call them.

- :func:`connect` starts a local Ray (or joins a cluster at an address).
- :class:`RayStore` is the object store as a host sees it: a host puts its nodes' adapters
  (numpy: zero-copy) as one object per call, and fetches its inbox straight from the store.
- :class:`RayHostGroup` is the :class:`~decaf_ray.engine.hosts.HostGroup` over actors of
  :class:`~decaf_ray.node.service.HostService`: every ``.remote`` call of the project is here.
- :func:`simulated_cluster` starts a multi-node cluster on this one machine (a test bed).
- :class:`HostPool` keeps hosts (and their loaded base model) warm across runs of a sweep and
  across tests; hosts are spread over the cluster's machines and pinned to GPUs when any exist.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import ray

from decaf_ray.algorithms import Adapter
from decaf_ray.config import ConfigError, RunConfig
from decaf_ray.engine import stopping
from decaf_ray.engine.hosts import HostGroup, plan_hosts
from decaf_ray.node import HostService, HostSpec, Part, RunSpec
from decaf_ray.prepare import Prepared

_saved_env: dict[str, str | None] = {}


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Make sure Ray is up; return True when this call started it (and should stop it).

    A local cluster (no address) is always a new one of this process, never one found
    running on the machine or named by RAY_ADDRESS, and it requires a token: a fresh random
    one, in this process's environment only (its Ray processes inherit it; nothing writes it
    to disk), so no other process that can reach its ports can submit work to it. Joining a
    cluster uses the user's own Ray settings (RAY_AUTH_MODE, RAY_AUTH_TOKEN or
    ~/.ray/auth_token); an address nothing answers at fails within seconds.
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(
        include_dashboard=False, log_to_driver=True, configure_logging=False
    )
    if not address:
        for key, value in (("RAY_AUTH_MODE", "token"), ("RAY_AUTH_TOKEN", secrets.token_hex(24))):
            _saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        _reload_auth()
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    else:
        _check_answers(address)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise ConfigError(
                f"could not join the Ray cluster at {address!r} ({str(exc).splitlines()[0]}): "
                "if it requires a token, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                "~/.ray/auth_token) as on the cluster"
            ) from None
    stopping.reinstall()
    return True


def _reload_auth() -> None:
    """Make this process's Ray see the auth settings now in its environment (Ray reads them
    once and caches them; its own ``_enable_token_auth`` reloads the same way)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _check_answers(address: str, timeout_s: float = 5.0) -> None:
    """A HOST:PORT that nothing listens at: one clear error now, not Ray's long retries."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(
            f"--address {address}: nothing answers there ({exc.strerror or exc}); start the "
            "cluster first (`ray start --head` prints its address) or leave --address out "
            "for a local run"
        ) from None


def shutdown() -> None:
    ray.shutdown()
    for key, value in _saved_env.items():  # the local token dies with its cluster
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if _saved_env:
        _saved_env.clear()
        _reload_auth()


@contextlib.contextmanager
def simulated_cluster(ray_nodes: int, cpus_per_node: int) -> Iterator[tuple[str, list[str]]]:
    """A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and
    ``ray_nodes - 1`` more nodes, ``cpus_per_node`` CPUs each) that requires a fresh token,
    kept in this process's environment only, as a local cluster does; yields its address (for
    ``cluster.address``) and its node ids. Everything is stopped and the environment
    restored on the way out."""
    from ray.cluster_utils import Cluster

    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(24))
    _reload_auth()
    sim = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False},
    )
    try:
        for _ in range(ray_nodes - 1):
            sim.add_node(num_cpus=cpus_per_node)
        sim.wait_for_nodes()
        yield sim.address, [node.node_id for node in sim.list_all_nodes()]
    finally:
        ray.shutdown()
        sim.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_auth()


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def get_parts(parts: Sequence[Part]) -> list[Any]:
    """The values ``parts`` name, fetching each distinct object once."""
    refs = list(dict.fromkeys(p.ref for p in parts))
    objects = dict(zip(refs, ray.get(refs)))
    return [objects[p.ref] if p.key is None else objects[p.ref][p.key] for p in parts]


class RayStore:
    """Ray's object store, for a host: one ``ray.put`` per call, one fetch per object."""

    def put_parts(self, values: dict[int, Any]) -> dict[int, Part]:
        ref = ray.put(values)
        return {key: Part(ref, key) for key in values}

    def get_parts(self, parts: list[Part]) -> list[Any]:
        return get_parts(parts)

    def where(self) -> dict[str, Any]:
        return {
            "ray_node": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }


HostActor = ray.remote(HostService)


class RayHostGroup(HostGroup):
    """Host actors; calls are actor tasks, answers are awaited with ``ray.wait``."""

    errors = (ray.exceptions.RayError,)
    lost = (
        ray.exceptions.RayActorError,  # the actor's process died (killed, out of memory...)
        ray.exceptions.ObjectLostError,  # an input put by a host that died
        ray.exceptions.NodeDiedError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.OutOfMemoryError,
    )

    def __init__(self, handles: list[Any], blocks: list[list[int]]) -> None:
        super().__init__(blocks)
        self.handles = handles

    def _call(self, host: int, method: str, *args: Any) -> Any:
        return getattr(self.handles[host], method).remote(*args)

    def _ready(self, handles: list[Any], timeout_s: float | None = None) -> list[Any]:
        done, rest = ray.wait(handles, num_returns=1, timeout=timeout_s)
        if not done:
            return []
        if rest:  # take every other call that is finished too: fewer trips round the loop
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        return done

    def _get(self, handle: Any) -> Any:
        return ray.get(handle)

    def _share(self, value: Any) -> Any:
        return ray.put(value)  # a top-level ObjectRef argument reaches the host as its value

    def fetch(self, parts: Sequence[Part]) -> list[Adapter]:
        return get_parts(parts)

    def put(self, value: Any) -> Part:
        return Part(ray.put(value))


def start_hosts(cfg: RunConfig, prep: Prepared, pool: HostPool) -> RayHostGroup:
    """Warm (or start) the hosts ``cfg`` needs and set them up with ``prep``'s nodes."""
    blocks = plan_hosts(cfg, prep.n, cluster_cpus())
    spec = HostSpec.of(cfg, prep.num_labels)
    group = RayHostGroup(pool.get(spec, len(blocks), cfg.cluster.gpus_per_host), blocks)
    group.setup(
        RunSpec.of(cfg, prep.choices, prep.pad_id), prep.shards, prep.eval_set, prep.local_evals
    )
    return group


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
            hosts.append(HostActor.options(**options).remote(spec, RayStore()))
        return hosts[:count]

    def clear(self) -> None:
        for hosts in self._hosts.values():
            for h in hosts:
                ray.kill(h)
        self._hosts = {}
