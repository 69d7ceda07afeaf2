"""DeCAF: consensus on the product, then factorization.

Each node forms P_i = sum_j Pi_ij B_j A_j from its neighbours' factors and keeps its best
rank-r approximation, TSVD_r(P_i) = U S Vh, split back into B and A (balanced or all in B).
By Eckart-Young its error sqrt(sum_{k>r} sigma_k^2), logged as ``tsvd_tail``, is never larger
than dLoRA's interference. The TSVD is computed from the factors (QR + small SVD), never from
the d x k product, for all modules of one shape, and all of a host's nodes whose stacks have
the same shapes, in one batched call (``combine_all``). Non-LoRA tensors (the head) are
averaged plainly.

B and A are defined only up to B G, G^-1 A. With ``align`` the split is turned by the
orthogonal Q (r x r) that brings it closest to the node's own factors before combining
(B Q, Q^T A: the same product), so that a new rotation or sign of the singular vectors each
round does not scramble the coordinates AdamW's moments refer to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from decaf_ray.algorithms.base import Adapter, Algorithm, Inbox, mix_adapters, mix_to_rank
from decaf_ray.algorithms.stacking import (
    chunks,
    concat_inboxes,
    inbox_weights,
    mix_extras,
    shape_groups,
    stack_part,
)
from decaf_ray.math.stacked import align_stacked, split_stacked, tsvd_and_interference_stacked

if TYPE_CHECKING:
    from decaf_ray.config import AlgorithmConfig


class DeCAF(Algorithm):
    name = "decaf"

    def __init__(
        self, sv_split: str = "balanced", reset_moments: bool = False, align: bool = False
    ) -> None:
        self.sv_split = sv_split
        self.resets_moments = reset_moments
        self.align = align

    @classmethod
    def from_config(cls, cfg: AlgorithmConfig) -> DeCAF:
        return cls(sv_split=cfg.sv_split, reset_moments=cfg.reset_moments, align=cfg.align)

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        return self.combine_all([own], [inbox])[0]

    def combine_all(
        self, owns: Sequence[Adapter], inboxes: Sequence[Inbox]
    ) -> list[tuple[Adapter, dict[str, float]]]:
        """Each node's combine; nodes whose stacks have the same shapes (as many messages,
        the same ranks: every node of a regular graph) share one batched TSVD per shape
        group of modules, so a host's combine costs a few calls, not a few per node."""
        nodes = [(own, inbox, *inbox_weights(inbox)) for own, inbox in zip(owns, inboxes)]
        batches: dict[tuple, list[int]] = {}
        for k, (own, _, _, msgs) in enumerate(nodes):
            batches.setdefault(_stack_key(own, msgs), []).append(k)
        out: list = [None] * len(nodes)
        for ks in batches.values():
            own, _, _, msgs = nodes[ks[0]]
            for chunk in chunks(ks, own, len(msgs)):
                for k, result in zip(chunk, self._combine_batch([nodes[k] for k in chunk])):
                    out[k] = result
        return out

    def _combine_batch(
        self, nodes: list[tuple[Adapter, Inbox, torch.Tensor, list[Adapter]]]
    ) -> list[tuple[Adapter, dict[str, float]]]:
        """New states and statistics of nodes (own, inbox, weights, messages) that share one
        stack key (:func:`_stack_key`)."""
        own0, _, _, msgs0 = nodes[0]
        owns = [own for own, *_ in nodes]
        A: list[dict] = [{} for _ in nodes]
        B: list[dict] = [{} for _ in nodes]
        stats = [{"interference": 0.0, "tsvd_tail": 0.0, "top_singular_value": 0.0} for _ in nodes]
        for mods in shape_groups(own0) if msgs0 else []:
            w = torch.stack([w for _, _, w, _ in nodes])  # (N, m)
            B_cat, A_cat = concat_inboxes([msgs for *_, msgs in nodes], mods, w)  # (N, M, ...)
            rank = own0.A[mods[0]].shape[0]
            U, S, Vh, s, gap = tsvd_and_interference_stacked(B_cat, A_cat, w, rank)
            B_new, A_new = split_stacked(U, S, Vh, self.sv_split)  # (N, M, d, r), (N, M, r, k)
            if self.align:  # the same products, turned towards each node's own factors
                B_own = stack_part(owns, mods, "B").transpose(0, 1)  # (N, M, d, r)
                A_own = stack_part(owns, mods, "A").transpose(0, 1)  # (N, M, r, k)
                B_new, A_new = align_stacked(B_new, A_new, B_own, A_own)
            dtype = own0.B[mods[0]].dtype  # one dtype per stack key
            B_new, A_new = B_new.numpy().astype(dtype), A_new.numpy().astype(dtype)
            zero = ~(S > 0).any(dim=-1)  # (N, M)
            tail = s[..., rank:].square().sum(dim=-1).masked_fill(zero, 0.0).sum(dim=-1)  # (N,)
            gaps, tops = gap.sum(dim=-1), S[..., 0].max(dim=-1).values
            for n, (own, _, w, msgs) in enumerate(nodes):
                st = stats[n]
                st["interference"] += float(gaps[n])
                st["tsvd_tail"] += float(tail[n])
                st["top_singular_value"] = max(st["top_singular_value"], float(tops[n]))
                for idx, m in enumerate(mods):
                    if zero[n, idx]:
                        # Pitfall guard: a zero product (B = 0 everywhere, e.g. before any
                        # local step) would give zero factors that never train again; keep
                        # the average (at the node's own rank, as mix_adapters keeps it).
                        for part, mine, dest in (("B", own.B, B[n]), ("A", own.A, A[n])):
                            factors = [getattr(msg, part)[m] for msg in msgs]
                            rank = mine[m].shape[0 if part == "A" else 1]
                            dest[m] = mix_to_rank(w.numpy(), factors, part, rank)
                        continue
                    B[n][m], A[n][m] = B_new[n, idx], A_new[n, idx]
        heads = mix_extras(
            owns, [msgs for *_, msgs in nodes], torch.stack([w for *_, w, _ in nodes])
        )
        out = []
        for n, (own, inbox, _, _) in enumerate(nodes):
            for m in own.modules:  # an inbox with no weight at all: keep the node's own factors
                A[n].setdefault(m, own.A[m])
                B[n].setdefault(m, own.B[m])
            # the head (non-LoRA tensors) is averaged
            extra = heads[n] if heads is not None else mix_adapters(inbox, own, ("extra",)).extra
            out.append((Adapter(A=A[n], B=B[n], extra=extra), stats[n]))
        return out


def _stack_key(own: Adapter, msgs: list[Adapter]) -> tuple:
    """What must agree for nodes to share one stacked TSVD: the number of messages, the
    node's own shapes and dtypes and, per module, the widest rank among the messages (the
    padding)."""
    widest = tuple(max(msg.A[m].shape[0] for msg in msgs) if msgs else 0 for m in own.modules)
    shapes = tuple((m, own.B[m].shape, own.A[m].shape, own.B[m].dtype) for m in own.modules)
    return len(msgs), shapes, widest
