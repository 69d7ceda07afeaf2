"""Hosts as plain objects in this process: the same :class:`HostGroup`, with no Ray at all.

Each call runs to completion when it is made, so a run is one thread doing every host's work
in the order the executor submits it. Results equal a run on Ray actors (the executor decides
everything a result depends on); use it for fast tests of the executor and for debugging with
a plain debugger. The Ray group stays the default of every command.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from decaf_ray.algorithms import Adapter
from decaf_ray.config import RunConfig
from decaf_ray.engine.hosts import HostGroup, plan_hosts
from decaf_ray.node import HostService, HostSpec, Part, RunSpec
from decaf_ray.prepare import Prepared


class _Box:
    """One stored object (compared by identity, as an object ref would be)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class LocalStore:
    def put_parts(self, values: dict[int, Any]) -> dict[int, Part]:
        box = _Box(values)
        return {key: Part(box, key) for key in values}

    def get_parts(self, parts: list[Part]) -> list[Any]:
        return [p.ref.value if p.key is None else p.ref.value[p.key] for p in parts]

    def where(self) -> dict[str, Any]:
        return {"ray_node": None, "gpu_ids": [], "in_process": os.getpid()}


class _Done:
    """A call that has already run: its value, or the exception it raised."""

    __slots__ = ("value", "error")

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


class LocalHostGroup(HostGroup):
    concurrent = False

    def __init__(self, services: list[HostService], blocks: list[list[int]]) -> None:
        super().__init__(blocks)
        self.services = services
        self.store = LocalStore()

    def _call(self, host: int, method: str, *args: Any) -> _Done:
        try:
            return _Done(getattr(self.services[host], method)(*args))
        except Exception as exc:  # kept, and raised as a HostError by result()
            return _Done(error=exc)

    def _ready(self, handles: list[Any], timeout_s: float | None = None) -> list[Any]:
        return list(handles)

    def _get(self, handle: _Done) -> Any:
        if handle.error is not None:
            raise handle.error
        return handle.value

    def _share(self, value: Any) -> Any:
        return value

    def fetch(self, parts: Sequence[Part]) -> list[Adapter]:
        return self.store.get_parts(list(parts))

    def put(self, value: Any) -> Part:
        return Part(_Box(value))


def start_local_hosts(cfg: RunConfig, prep: Prepared, cpus: int = 2) -> LocalHostGroup:
    """Hosts for ``cfg`` in this process, laid out as on a Ray cluster of ``cpus`` CPUs."""
    blocks = plan_hosts(cfg, prep.n, cpus)
    spec = HostSpec.of(cfg, prep.num_labels)
    store = LocalStore()
    group = LocalHostGroup([HostService(spec, store) for _ in blocks], blocks)
    group.setup(
        RunSpec.of(cfg, prep.choices, prep.pad_id), prep.shards, prep.eval_set, prep.local_evals
    )
    return group
