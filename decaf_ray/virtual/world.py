"""Everything the virtual clock needs, drawn from the config and the seed.

A :class:`World` holds, for n nodes and T rounds: the round compute time of every node
(tau * step seconds * straggler factor), the link model, the message-loss model, the churn
table, and the mixing matrix of every round (fixed, or recomputed for a time-varying graph).
Each model gets its own seed stream derived from (seed, tag), so adding stragglers does not
change which messages are lost, and so on.

Only the (n, T) tables (compute seconds, churn: 9 bytes per node-round) are held whole. Losses
and time-varying mixing matrices are drawn when a round is first asked for and kept for the
last few rounds asked (:data:`ROUNDS_CACHED`); Pi may be a dense ndarray or a scipy.sparse
matrix, and the planners read it through :meth:`World.neighbours` (O(n + nnz) per round).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from decaf_ray.virtual.churn import active_table
from decaf_ray.virtual.compute import step_seconds
from decaf_ray.virtual.graphs import mixing_at
from decaf_ray.virtual.links import LinkModel, LossModel
from decaf_ray.virtual.neighbours import Neighbours
from decaf_ray.virtual.stragglers import straggler_factors
from topologies import MixingError, check_mixing

if TYPE_CHECKING:
    from decaf_ray.config import RunConfig

_COMPUTE, _STRAGGLERS, _LOSS, _CHURN, _GRAPH = range(11, 16)
ROUNDS_CACHED = 64  # rounds of losses and time-varying neighbours kept (recomputed if evicted)


def _seed(seed: int, tag: int) -> int:
    return int(np.random.SeedSequence([seed, tag]).generate_state(1)[0])


class _Recent:
    """The values of the last ``size`` keys asked for, computed by ``make`` on a miss."""

    def __init__(self, make: Callable[[int], Any], size: int = ROUNDS_CACHED) -> None:
        self.make, self.size, self.values = make, size, OrderedDict()

    def __call__(self, key: int) -> Any:
        if key in self.values:
            self.values.move_to_end(key)
            return self.values[key]
        value = self.values[key] = self.make(key)
        if len(self.values) > self.size:
            self.values.popitem(last=False)
        return value


@dataclass(frozen=True)
class RoundMixings(Sequence):
    """The T mixing matrices of a run, ``[t - 1]`` being round t's, computed when asked: the
    static ``Pi`` (dense or sparse) every round, or ``topology.mixing`` of round t's graph
    (checked when made; :func:`round_mixings` checks every round up front)."""

    Pi: Any  # (n, n) ndarray or scipy.sparse: the static graph's matrix
    rounds: int
    graph: str = "static"
    rule: str = "metropolis_hastings"
    seed: int = 0
    p: float | None = None

    @property
    def static(self) -> bool:
        return self.graph == "static"

    def __len__(self) -> int:
        return self.rounds

    def __getitem__(self, k: int):
        if not 0 <= k < self.rounds:
            raise IndexError(f"round {k + 1} is not in 1..{self.rounds}")
        if self.static:
            return self.Pi
        Pi_t = mixing_at(self.graph, self.Pi.shape[0], k + 1, self.rule, self.seed, self.p)
        self._check(k + 1, Pi_t)
        return Pi_t

    def _check(self, t: int, Pi_t) -> None:
        """A round's graph may be disconnected (connectivity only has to hold over time), but
        its matrix must be symmetric, doubly stochastic and non-negative, or gossip drifts away
        from the average. Raises MixingError naming the round and a rule that works."""
        report = check_mixing(Pi_t)
        if not (report.symmetric and report.doubly_stochastic and report.nonnegative):
            problem = next(p for p in report.problems if "disconnected" not in p)
            problem = problem.split("; use ")[0]
            raise MixingError(
                f"schedule.graph={self.graph!r} with topology.mixing={self.rule!r}: the mixing "
                f"matrix of round {t} is not a gossip matrix ({problem}); use topology.mixing="
                "metropolis_hastings or max_degree, which are symmetric and doubly stochastic "
                "on every graph"
            )


@dataclass(frozen=True)
class World:
    compute_s: np.ndarray  # (n, T) virtual seconds of node i's local steps in round t (col t-1)
    link: LinkModel
    losses: LossModel  # which messages are lost, drawn per round and link
    active: np.ndarray  # (n, T) node i takes part in round t
    mixings: Sequence  # T matrices (n, n), dense or sparse; mixings[t-1] is round t's Pi
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n(self) -> int:
        return self.compute_s.shape[0]

    @property
    def rounds(self) -> int:
        return self.compute_s.shape[1]

    def Pi(self, round_idx: int):
        """Round ``round_idx``'s mixing matrix as given (ndarray or scipy.sparse)."""
        return self.mixings[round_idx - 1]

    def neighbours(self, round_idx: int) -> Neighbours:
        """Round ``round_idx``'s Pi by rows and columns (one object for a static graph)."""
        if isinstance(self.mixings, RoundMixings) and self.mixings.static:
            if "static" not in self._cache:
                self._cache["static"] = Neighbours.of(self.mixings.Pi)
            return self._cache["static"]
        if "neighbours" not in self._cache:
            self._cache["neighbours"] = _Recent(lambda t: Neighbours.of(self.Pi(t)))
        return self._cache["neighbours"](round_idx)

    def is_lost(self, round_idx: int, sender: int, receiver: int) -> bool:
        """True when ``sender``'s round-``round_idx`` message to ``receiver`` is lost."""
        if self.losses.lossless:
            return False
        if "lost" not in self._cache:
            self._cache["lost"] = _Recent(lambda t: self.losses.lost(t, self.neighbours(t).links))
        return sender * self.n + receiver in self._cache["lost"](round_idx)


def build_world(cfg: RunConfig, Pi) -> World:
    """The world of ``cfg`` on the static mixing matrix ``Pi`` (n x n, dense or sparse)."""
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
    losses = LossModel.of(n, s.loss_p, s.link_loss, _seed(seed, _LOSS))
    active = active_table(n, T, s.churn, s.churn_p, s.churn_down, _seed(seed, _CHURN))
    mixings = _mixings(cfg, Pi)
    return World(compute_s, LinkModel(s.latency_s, s.bandwidth_bytes_s), losses, active, mixings)


def _mixings(cfg: RunConfig, Pi) -> RoundMixings:
    s = cfg.schedule
    return RoundMixings(
        Pi, cfg.train.rounds, s.graph, cfg.topology.mixing, _seed(cfg.seed, _GRAPH), s.graph_p
    )


def round_mixings(cfg: RunConfig, Pi) -> RoundMixings:
    """Each round's mixing matrix: ``Pi`` (already checked) on a static graph, else
    ``topology.mixing`` of that round's graph, every round checked here (and then let go: the
    sequence makes a round's matrix again when asked).

    Raises MixingError naming the first round whose matrix is not a gossip matrix.
    """
    mixings = _mixings(cfg, Pi)
    if not mixings.static:
        for _ in mixings:  # making a round's matrix checks it
            pass
    return mixings
