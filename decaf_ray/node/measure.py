"""The network metrics of a round, measured where the adapters are: each host sums its own
nodes (:func:`network_sums`), the driver adds the hosts' sums in host order and finishes
(:func:`network_metrics`, :func:`average_adapter`). The maths is in
:mod:`decaf_ray.math.sums`; this module maps adapters onto it. The values equal
:mod:`decaf_ray.engine.network`'s (which needs all n adapters in one place) to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from operator import add

import numpy as np
import torch

from decaf_ray.algorithms.base import Adapter
from decaf_ray.algorithms.stacking import shape_groups
from decaf_ray.math.sums import GroupSums, LowRank, group_metrics, group_sums


@dataclass(frozen=True)
class NetworkSums:
    """Sums over some nodes of every shape group, and of the extra (non-LoRA) tensors."""

    count: int
    groups: tuple[GroupSums, ...]
    extra: dict[str, np.ndarray]

    def __add__(self, other: NetworkSums) -> NetworkSums:
        return NetworkSums(
            self.count + other.count,
            tuple(a + b for a, b in zip(self.groups, other.groups)),
            {k: v + other.extra[k] for k, v in self.extra.items()},
        )


def _stack(adapters: Sequence[Adapter], modules: list[str], part: str, rank: int) -> torch.Tensor:
    """Factor ``part`` of ``modules`` over ``adapters``, zero-padded to ``rank``: (M, m, ...)
    float64, written once into one array (a factor of lower rank fills its leading rows of
    A or columns of B; the rest stays zero)."""
    d, k = getattr(adapters[0], part)[modules[0]].shape
    shape = (rank, k) if part == "A" else (d, rank)
    out = np.zeros((len(modules), len(adapters), *shape))
    for j, m in enumerate(modules):
        for i, a in enumerate(adapters):
            x = getattr(a, part)[m]
            if part == "A":
                out[j, i, : x.shape[0]] = x
            else:
                out[j, i, :, : x.shape[1]] = x
    return torch.from_numpy(out)


SUM_BYTES = 32 * 2**20  # nodes summed at once: at most this much of float64 factors


def network_sums(
    after: Sequence[Adapter],
    ref: Adapter,
    rank: int,
    before: Sequence[Adapter] | None = None,
) -> NetworkSums:
    """Sums over the given nodes' states ``after`` (and ``before`` their combine, for the
    drift), shifted by the shared reference ``ref``; factors zero-padded to ``rank`` (the
    network's widest: the padding leaves every product unchanged).

    The nodes are summed in runs of at most :data:`SUM_BYTES` of stacked factors and the
    runs' sums added: the stacks stay in cache, and a host's memory for the metrics does not
    grow with its node count."""
    per_node = 8 * rank * max(sum(d + k for d, k in _shapes(ref)), 1)  # B and A, all modules
    size = max(1, SUM_BYTES // per_node)
    parts = [
        _sums(after[s : s + size], ref, rank, None if before is None else before[s : s + size])
        for s in range(0, len(after), size)
    ]
    return reduce(add, parts)


def _shapes(adapter: Adapter) -> list[tuple[int, int]]:
    """(d, k) of each module: B is d x r, A is r x k."""
    return [(adapter.B[m].shape[0], adapter.A[m].shape[1]) for m in adapter.modules]


def _sums(
    after: Sequence[Adapter], ref: Adapter, rank: int, before: Sequence[Adapter] | None
) -> NetworkSums:
    """:func:`network_sums` of one run of nodes, in one stack per shape group."""
    groups = []
    for modules in shape_groups(ref):
        B, A = _stack(after, modules, "B", rank), _stack(after, modules, "A", rank)
        B_0, A_0 = _stack([ref], modules, "B", rank)[:, 0], _stack([ref], modules, "A", rank)[:, 0]
        pair = (None, None)
        if before is not None:
            pair = (_stack(before, modules, "B", rank), _stack(before, modules, "A", rank))
        groups.append(group_sums(modules, B, A, B_0, A_0, *pair))
    extra = {k: np.sum([a.extra[k] for a in after], axis=0, dtype=np.float64) for k in ref.extra}
    return NetworkSums(len(after), tuple(groups), extra)


def network_metrics(sums: NetworkSums) -> dict[str, float]:
    """Consensus errors (and drift, when measured), summed over modules, from the sums over
    all n nodes."""
    out: dict[str, float] = {}
    for group in sums.groups:
        for key, value in group_metrics(group, sums.count).items():
            out[key] = out.get(key, 0.0) + value
    return out


def average_adapter(sums: NetworkSums, ref: Adapter, rank: int) -> Adapter:
    """The network-average model: update B_0 A_0 + sum_i X_i / n, the exact mean of the
    nodes' products, as one adapter (of rank r + R for factored sums, or the layer's width)."""
    n, A, B = sums.count, {}, {}
    for group in sums.groups:
        mods = list(group.modules)
        B_0, A_0 = (_stack([ref], mods, part, rank)[:, 0].numpy() for part in ("B", "A"))
        mean_B, mean_A = (LowRank(None, B_0, A_0) + group.product.scaled(1.0 / n)).factors()
        for j, m in enumerate(mods):
            B[m], A[m] = mean_B[j], mean_A[j]
    extra = {k: (v / n).astype(ref.extra[k].dtype) for k, v in sums.extra.items()}
    return Adapter(A=A, B=B, extra=extra)
