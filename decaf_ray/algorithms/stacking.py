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


def distinct_messages(inboxes: Sequence[Sequence[Adapter]]) -> tuple[list[Adapter], torch.Tensor]:
    """The distinct messages (by identity) of N inboxes of m messages each, and where each
    inbox's messages are among them: an index (N, m)."""
    slot: dict[int, int] = {}
    distinct: list[Adapter] = []
    for msgs in inboxes:
        for msg in msgs:
            if id(msg) not in slot:
                slot[id(msg)] = len(distinct)
                distinct.append(msg)
    index = torch.tensor([[slot[id(msg)] for msg in msgs] for msgs in inboxes], dtype=torch.long)
    return distinct, index.reshape(len(inboxes), -1)


def mix_extras(
    owns: Sequence[Adapter], inboxes: Sequence[Sequence[Adapter]], w: torch.Tensor
) -> list[dict[str, np.ndarray]] | None:
    """Each node's non-LoRA tensors (the head) as the weighted mean of its messages', w (N, m),
    summed in float64 and cast to the node's dtype, as ``mix_adapters`` does one node at a
    time; None where some message's tensors differ in name or shape from the nodes' (mix
    those one node at a time)."""
    distinct, index = distinct_messages(inboxes)
    first = owns[0].extra
    same = all(
        a.extra.keys() == first.keys()
        and all(a.extra[k].shape == v.shape for k, v in first.items())
        for a in [*owns, *distinct]
    )
    if not same:
        return None
    out: list[dict[str, np.ndarray]] = [{} for _ in owns]
    for key, value in first.items():
        if not distinct:
            mixed = np.zeros((len(owns), *value.shape))
        else:
            stacked = np.stack([a.extra[key] for a in distinct]).astype(np.float64)  # (D, ...)
            mixed = np.einsum("nm,nm...->n...", w.numpy(), stacked[index.numpy()])
        for n, own in enumerate(owns):
            out[n][key] = mixed[n].astype(own.extra[key].dtype)
    return out


def concat_inboxes(
    inboxes: Sequence[Sequence[Adapter]], modules: list[str], w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For N nodes' inboxes of m messages each and their weights ``w`` (N, m):
    B_cat = [w_1 B_1, ..., w_m B_m] (N, M, d, m r) and A_cat = [A_1; ...; A_m] (N, M, m r, k),
    float64, for ``modules`` (one shape group).

    Each distinct message is stacked once and gathered by index (on a ring every message
    reaches three nodes). Messages of different ranks are zero-padded to the largest (B's
    columns, A's rows): the products are unchanged, and the blocks line up as the
    interference needs (the padding rule of heterogeneous-rank federated LoRA)."""
    distinct, index = distinct_messages(inboxes)
    r = max(a.A[m].shape[0] for a in distinct for m in modules)
    Bs = torch.from_numpy(
        np.stack([[pad_rank(a.B[m], "B", r) for m in modules] for a in distinct]).astype(np.float64)
    )  # (D, M, d, r)
    As = torch.from_numpy(
        np.stack([[pad_rank(a.A[m], "A", r) for m in modules] for a in distinct]).astype(np.float64)
    )  # (D, M, r, k)
    N, m = index.shape
    B = Bs[index] * w.reshape(N, m, 1, 1, 1)  # (N, m, M, d, r)
    B_cat = B.permute(0, 2, 3, 1, 4).reshape(N, len(modules), B.shape[-2], m * r)
    A_cat = As[index].transpose(1, 2).reshape(N, len(modules), m * r, As.shape[-1])
    return B_cat, A_cat


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
