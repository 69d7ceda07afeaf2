"""The virtual clock: compute, link, straggler, loss, churn and graph models, and the plans.

Pure and Ray-free. Event times come only from these models and the run's seed, never from the
wall clock: :func:`build_world` draws every model; :class:`SyncPlanner` (modes ``sync`` and
``deadline``) and :class:`AsyncPlanner` (``async`` and ``bounded``) turn a world into one
:class:`Step` per node and round, made as virtual time advances; :class:`PlanStream` keeps a
window of them ahead of :mod:`decaf_ray.engine.executor`, which runs them. :func:`make_plan`
collects every step at once (small runs and tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from decaf_ray.virtual.churn import active_table, rejoining
from decaf_ray.virtual.compute import COMPUTE_MODELS, read_trace, step_seconds
from decaf_ray.virtual.des import AsyncPlanner, plan_async
from decaf_ray.virtual.events import Event, EventQueue
from decaf_ray.virtual.graphs import DYNAMIC_GRAPHS, graph_at, mixing_at
from decaf_ray.virtual.links import LinkModel, LossModel, MessageSizes, loss_table, parse_link
from decaf_ray.virtual.plan import Plan, Receipt, Step, SyncPlanner, plan_sync
from decaf_ray.virtual.stragglers import straggler_factors
from decaf_ray.virtual.stream import PlanStream, last_round_of, make_planner
from decaf_ray.virtual.world import World, build_world, round_mixings

if TYPE_CHECKING:
    from decaf_ray.config import ScheduleConfig


def make_plan(world: World, mode: str, nbytes: MessageSizes, s: ScheduleConfig) -> Plan:
    """Every step of ``mode``'s plan (sync, deadline, async, bounded) for ``world``, and every
    event; ``nbytes`` is the size of a message (:data:`MessageSizes`: one for every node, one
    per node, or per node and round of a cycle; it sets link delays); ``s`` supplies the
    mode's options. O(n T) memory: a run streams its plan instead (:class:`PlanStream`)."""
    events: list = []
    planner = make_planner(world, mode, nbytes, s, events)
    steps = {(st.node, st.round_idx): st for batch in planner.batches() for st in batch}
    return Plan(steps, tuple(events))


__all__ = [
    "COMPUTE_MODELS",
    "AsyncPlanner",
    "LossModel",
    "PlanStream",
    "SyncPlanner",
    "last_round_of",
    "make_planner",
    "DYNAMIC_GRAPHS",
    "Event",
    "EventQueue",
    "LinkModel",
    "MessageSizes",
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
