"""The virtual clock: compute, link, straggler, loss, churn and graph models, and the plans.

Pure and Ray-free. Event times come only from these models and the run's seed, never from the
wall clock: :func:`build_world` draws every model once; :func:`plan_sync` (modes ``sync`` and
``deadline``) and :func:`plan_async` (``async`` and ``bounded``) turn a world into one
:class:`Step` per node and round, which :mod:`decaf_ray.engine.executor` then runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from decaf_ray.virtual.churn import active_table, rejoining
from decaf_ray.virtual.compute import COMPUTE_MODELS, read_trace, step_seconds
from decaf_ray.virtual.des import plan_async
from decaf_ray.virtual.events import Event, EventQueue
from decaf_ray.virtual.graphs import DYNAMIC_GRAPHS, graph_at, mixing_at
from decaf_ray.virtual.links import LinkModel, loss_table, parse_link
from decaf_ray.virtual.plan import Plan, Receipt, Step, plan_sync
from decaf_ray.virtual.stragglers import straggler_factors
from decaf_ray.virtual.world import World, build_world, round_mixings

if TYPE_CHECKING:
    from decaf_ray.config import ScheduleConfig


def make_plan(world: World, mode: str, nbytes: float, s: ScheduleConfig) -> Plan:
    """The plan of ``mode`` (sync, deadline, async, bounded) for ``world``; ``nbytes`` is the
    size of one message (it sets link delays); ``s`` supplies the mode's options."""
    if mode == "sync":
        return plan_sync(world, nbytes, None, s.rejoin, s.missing, s.time_budget_s)
    if mode == "deadline":
        return plan_sync(world, nbytes, s.deadline_s, s.rejoin, s.missing, s.time_budget_s)
    if mode == "async":
        return plan_async(world, nbytes, None, s.rejoin, s.missing, s.time_budget_s)
    if mode == "bounded":
        return plan_async(world, nbytes, s.staleness, s.rejoin, s.missing, s.time_budget_s)
    raise ValueError(f"unknown schedule.mode {mode!r}")


__all__ = [
    "COMPUTE_MODELS",
    "DYNAMIC_GRAPHS",
    "Event",
    "EventQueue",
    "LinkModel",
    "Plan",
    "Receipt",
    "Step",
    "World",
    "active_table",
    "build_world",
    "graph_at",
    "loss_table",
    "make_plan",
    "mixing_at",
    "parse_link",
    "plan_async",
    "plan_sync",
    "read_trace",
    "rejoining",
    "round_mixings",
    "step_seconds",
    "straggler_factors",
]
