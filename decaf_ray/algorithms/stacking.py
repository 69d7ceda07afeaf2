"""Adapters as stacks: the factors of many messages (or nodes) for a group of modules at once.

The batched kernels of :mod:`decaf_ray.math.stacked` work on tensors (M, n, ...) with one entry
per module of a shape group and one per message. These helpers build them from numpy
:class:`~decaf_ray.algorithms.base.Adapter` objects (float64, one copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from decaf_ray.algorithms.base import Adapter, Inbox, pad_rank
from decaf_ray.math.stacked import interference_stacked


def shape_groups(adapter: Adapter) -> list[list[str]]:
    """The adapter's modules grouped by the shapes of (B, A), in module order."""
    groups: dict[tuple, list[str]] = {}
    for m in adapter.modules:
        groups.setdefault((adapter.B[m].shape, adapter.A[m].shape), []).append(m)
    return list(groups.values())


def stack_part(
    adapters: Sequence[Adapter], modules: list[str], part: str, fallback: Adapter | None = None
) -> torch.Tensor:
    """Factor ``part`` ("A" or "B") of ``modules`` over ``adapters``: (M, n, ...) float64.

    A message without the factor (dLoRA-FA sends no A, RoLoRA one factor a round)
    contributes ``fallback``'s.
    """
    rows = []
    for m in modules:
        own = getattr(fallback, part).get(m) if fallback is not None else None
        tensors = [getattr(a, part).get(m, own) for a in adapters]
        if len({t.shape for t in tensors}) > 1:  # ranks differ: zero-pad to the largest
            top = max(t.shape[0 if part == "A" else 1] for t in tensors)
            tensors = [pad_rank(t, part, top) for t in tensors]
        rows.append(np.stack(tensors))
    return torch.from_numpy(np.stack(rows).astype(np.float64, copy=False))


def concat_factors(
    msgs: Sequence[Adapter], modules: list[str], w: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """B_cat = [w_1 B_1, ..., w_m B_m] (M, d, m r) and A_cat = [A_1; ...; A_m] (M, m r, k),
    float64, for ``modules`` (one shape group) over the messages.

    Messages of different ranks are zero-padded to the largest (B's columns, A's rows): the
    products are unchanged, and the blocks line up as the interference needs (the padding
    rule of heterogeneous-rank federated LoRA)."""
    r = max(a.A[m].shape[0] for a in msgs for m in modules)

    def cols(x: np.ndarray) -> np.ndarray:
        return x if x.shape[1] == r else np.pad(x, ((0, 0), (0, r - x.shape[1])))

    def rows(x: np.ndarray) -> np.ndarray:
        return x if x.shape[0] == r else np.pad(x, ((0, r - x.shape[0]), (0, 0)))

    B_cat = np.stack(
        [np.concatenate([wj * cols(a.B[m]) for wj, a in zip(w, msgs)], 1) for m in modules]
    )
    A_cat = np.stack([np.concatenate([rows(a.A[m]) for a in msgs], 0) for m in modules])
    return torch.from_numpy(B_cat.astype(np.float64)), torch.from_numpy(A_cat.astype(np.float64))


def inbox_weights(inbox: Inbox) -> tuple[torch.Tensor, list[Adapter]]:
    """The non-zero weights of an inbox as a float64 vector (m,), and their messages."""
    kept = [(w, msg) for w, msg in inbox if w != 0.0]
    return torch.tensor([w for w, _ in kept], dtype=torch.float64), [msg for _, msg in kept]


def interference(inbox: Inbox, own: Adapter) -> float:
    """Sum over modules of ||P_i - B_bar A_bar||_F: what averaging factors separately misses."""
    w, msgs = inbox_weights(inbox)
    if not msgs:
        return 0.0
    total = 0.0
    for mods in shape_groups(own):
        B = stack_part(msgs, mods, "B", fallback=own)  # (M, m, d, r)
        A = stack_part(msgs, mods, "A", fallback=own)  # (M, m, r, k)
        total += float(interference_stacked(B, A, w).sum())
    return total
