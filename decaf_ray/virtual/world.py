"""Everything the virtual clock needs, drawn once from the config and the seed.

A :class:`World` holds, for n nodes and T rounds: the round compute time of every node
(tau * step seconds * straggler factor), the link model, the message-loss table, the churn
table, and the mixing matrix of every round (fixed, or recomputed for a time-varying graph).
Each model gets its own seed stream derived from (seed, tag), so adding stragglers does not
change which messages are lost, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from decaf_ray.virtual.churn import active_table
from decaf_ray.virtual.compute import step_seconds
from decaf_ray.virtual.graphs import mixing_at
from topologies import MixingError, check_mixing

if TYPE_CHECKING:
    from decaf_ray.config import RunConfig
from decaf_ray.virtual.links import LinkModel, loss_table
from decaf_ray.virtual.stragglers import straggler_factors

_COMPUTE, _STRAGGLERS, _LOSS, _CHURN, _GRAPH = range(11, 16)


def _seed(seed: int, tag: int) -> int:
    return int(np.random.SeedSequence([seed, tag]).generate_state(1)[0])


@dataclass(frozen=True)
class World:
    compute_s: np.ndarray  # (n, T) virtual seconds of node i's local steps in round t (col t-1)
    link: LinkModel
    lost: np.ndarray  # (T, n, n) lost[t-1, j, i]: j's round-t message to i is lost
    active: np.ndarray  # (n, T) node i takes part in round t
    mixings: tuple[np.ndarray, ...]  # T matrices (n, n); mixings[t-1] is round t's Pi

    @property
    def n(self) -> int:
        return self.compute_s.shape[0]

    @property
    def rounds(self) -> int:
        return self.compute_s.shape[1]

    def Pi(self, round_idx: int) -> np.ndarray:
        return self.mixings[round_idx - 1]


def build_world(cfg: RunConfig, Pi: np.ndarray) -> World:
    """The world of ``cfg`` on the static mixing matrix ``Pi`` (n x n)."""
    s, n, T, seed = cfg.schedule, Pi.shape[0], cfg.train.rounds, cfg.seed
    steps = step_seconds(
        s.compute,
        n,
        T,
        base_s=s.step_s,
        factors=s.factors,
        sigma=s.sigma,
        alpha=s.pareto_alpha,
        trace_path=s.trace_path,
        seed=_seed(seed, _COMPUTE),
    )
    slow = straggler_factors(
        n, T, s.straggler_fraction, s.straggler_factor, s.straggler_every, _seed(seed, _STRAGGLERS)
    )
    compute_s = cfg.steps_per_round * steps * slow
    lost = loss_table(n, T, s.loss_p, s.link_loss, _seed(seed, _LOSS))
    active = active_table(n, T, s.churn, s.churn_p, s.churn_down, _seed(seed, _CHURN))
    mixings = round_mixings(cfg, Pi)
    return World(compute_s, LinkModel(s.latency_s, s.bandwidth_bytes_s), lost, active, mixings)


def round_mixings(cfg: RunConfig, Pi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each round's mixing matrix: ``Pi`` (already checked) on a static graph, else
    ``topology.mixing`` of that round's graph, checked here.

    A round's graph may be disconnected (connectivity only has to hold over time), but its
    matrix must be symmetric, doubly stochastic and non-negative, or gossip drifts away from
    the average. Raises MixingError naming the round and a rule that works.
    """
    s, n, T, rule = cfg.schedule, Pi.shape[0], cfg.train.rounds, cfg.topology.mixing
    if s.graph == "static":
        return tuple(Pi for _ in range(T))
    mixings = []
    for t in range(1, T + 1):
        Pi_t = mixing_at(s.graph, n, t, rule, _seed(cfg.seed, _GRAPH), s.graph_p)
        report = check_mixing(Pi_t)
        if not (report.symmetric and report.doubly_stochastic and report.nonnegative):
            problem = next(p for p in report.problems if "disconnected" not in p)
            problem = problem.split("; use ")[0]
            raise MixingError(
                f"schedule.graph={s.graph!r} with topology.mixing={rule!r}: the mixing matrix "
                f"of round {t} is not a gossip matrix ({problem}); use topology.mixing="
                "metropolis_hastings or max_degree, which are symmetric and doubly stochastic "
                "on every graph"
            )
        mixings.append(Pi_t)
    return tuple(mixings)
