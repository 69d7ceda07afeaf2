"""Adapters as stacks: the factors of many messages (or nodes) for a group of modules at once.

The batched kernels of :mod:`decaf_ray.math.stacked` work on tensors (M, n, ...) with one entry
per module of a shape group and one per message. These helpers build them from numpy
:class:`~decaf_ray.algorithms.base.Adapter` objects (float64, one copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from decaf_ray.algorithms.base import Adapter, Inbox, mix_adapters, pad_rank
from decaf_ray.math.stacked import interference_cat_stacked, interference_stacked

STACK_BYTES = 64 * 2**20  # nodes stacked into one batched call: at most this much input


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
    those one node at a time). A node with no weight at all keeps its own head."""
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
    heard = (w != 0).any(dim=-1).tolist() if w.numel() else [False] * len(owns)
    for key in first:
        if any(heard):
            stacked = np.stack([a.extra[key] for a in distinct]).astype(np.float64)  # (D, ...)
            mixed = np.einsum("nm,nm...->n...", w.numpy(), stacked[index.numpy()])
        for n, own in enumerate(owns):
            out[n][key] = mixed[n].astype(own.extra[key].dtype) if heard[n] else own.extra[key]
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
    # Each block is written once into its place: gathering (N, m, ...) stacks first and then
    # permuting them would pass over the (large, memory-bound) stacks three times.
    (N, m), (M, d, _), k = index.shape, Bs.shape[1:], As.shape[-1]
    B_cat = Bs.new_empty(N, M, d, m * r)
    A_cat = As.new_empty(N, M, m * r, k)
    for j in range(m):
        at = slice(j * r, (j + 1) * r)
        torch.mul(Bs[index[:, j]], w[:, j].reshape(N, 1, 1, 1), out=B_cat[..., at])
        A_cat[..., at, :] = As[index[:, j]]
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


def stack_bytes(own: Adapter, m: int) -> int:
    """float64 bytes of one node's B_cat (d, m r) and A_cat (m r, k) over all its modules."""
    return (
        8
        * max(1, m)
        * sum((own.B[x].shape[0] + own.A[x].shape[1]) * own.A[x].shape[0] for x in own.modules)
        or 1
    )


def chunks(keys: Sequence[int], own: Adapter, m: int) -> list[Sequence[int]]:
    """``keys`` (nodes like ``own`` with ``m`` messages each) in runs of at most
    :data:`STACK_BYTES` of stacked input."""
    size = max(1, STACK_BYTES // stack_bytes(own, m))
    return [keys[start : start + size] for start in range(0, len(keys), size)]


def factor_average_all(
    owns: Sequence[Adapter], inboxes: Sequence[Inbox]
) -> list[tuple[Adapter, dict[str, float]]]:
    """Factor averaging (:func:`~decaf_ray.algorithms.base.mix_adapters`) and its
    :func:`interference` for each node of a host, as dLoRA and its relatives combine.

    Nodes whose messages all carry every tensor of the node in its shapes and dtypes, with
    non-zero weights (every node of a homogeneous run), are grouped by layout and message
    count; each group takes one batched QR pair and one weighted sum per shape group of
    modules. Any other node (a missing factor, other ranks, a zero weight) is combined on
    its own. Same results to rounding."""
    out: list = [None] * len(owns)
    layouts: dict[int, tuple] = {}
    batches: dict[tuple, list[int]] = {}
    for k, (own, inbox) in enumerate(zip(owns, inboxes)):
        if _uniform(own, inbox, layouts):
            batches.setdefault((len(inbox), layouts[id(own)]), []).append(k)
        else:
            out[k] = (mix_adapters(inbox, own), {"interference": interference(inbox, own)})
    for (m, _), ks in batches.items():
        for chunk in chunks(ks, owns[ks[0]], m):
            batch = _factor_average_batch([owns[k] for k in chunk], [inboxes[k] for k in chunk])
            for k, result in zip(chunk, batch):
                out[k] = result
    return out


def _layout(adapter: Adapter) -> tuple:
    return tuple(
        (part, key, value.shape, value.dtype)
        for part in ("A", "B", "extra")
        for key, value in getattr(adapter, part).items()
    )


def _uniform(own: Adapter, inbox: Inbox, layouts: dict[int, tuple]) -> bool:
    """Whether every message of a non-empty ``inbox`` has non-zero weight and ``own``'s
    layout (``layouts``: each adapter's, by id, computed once per call)."""

    def layout(a: Adapter) -> tuple:
        if id(a) not in layouts:
            layouts[id(a)] = _layout(a)
        return layouts[id(a)]

    mine = layout(own)
    return bool(inbox) and all(w != 0.0 and layout(msg) == mine for w, msg in inbox)


def _factor_average_batch(
    owns: Sequence[Adapter], inboxes: Sequence[Inbox]
) -> list[tuple[Adapter, dict[str, float]]]:
    """:func:`factor_average_all` of nodes that share one layout and message count."""
    w = torch.tensor([[wj for wj, _ in inbox] for inbox in inboxes], dtype=torch.float64)
    msgs = [[msg for _, msg in inbox] for inbox in inboxes]
    N, m = w.shape
    A: list[dict] = [{} for _ in owns]
    B: list[dict] = [{} for _ in owns]
    gaps = torch.zeros(N, dtype=torch.float64)
    for mods in shape_groups(owns[0]):
        B_cat, A_cat = concat_inboxes(msgs, mods, w)  # (N, M, d, m r), (N, M, m r, k)
        gaps += interference_cat_stacked(B_cat, A_cat, w).sum(dim=-1)
        M, d, k = len(mods), B_cat.shape[-2], A_cat.shape[-1]
        B_bar = B_cat.reshape(N, M, d, m, -1).sum(dim=-2)  # the blocks are w_j B_j already
        A_bar = (A_cat.reshape(N, M, m, -1, k) * w.reshape(N, 1, m, 1, 1)).sum(dim=2)
        dtype = owns[0].B[mods[0]].dtype  # one layout: one dtype
        B_bar, A_bar = B_bar.numpy().astype(dtype), A_bar.numpy().astype(dtype)
        for n in range(N):
            for idx, mod in enumerate(mods):
                B[n][mod], A[n][mod] = B_bar[n, idx], A_bar[n, idx]
    heads = mix_extras(owns, msgs, w)  # one layout: never None
    return [
        (Adapter(A=A[n], B=B[n], extra=heads[n]), {"interference": float(gaps[n])})
        for n in range(N)
    ]
