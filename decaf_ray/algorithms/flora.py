"""FLoRA: the server stacks the clients' factors, every node merges the stack into its base
model and restarts its adapter.

Stacking is exact: with p_k = n_k / sum_j n_j (shard sizes, as fedavg weighs),

    B = [B_1 ... B_K]              (d, sum_k r_k)
    A = [p_1 A_1; ...; p_K A_K]    (sum_k r_k, k)
    B A = sum_k p_k B_k A_k,

the weighted mean of the products, for any ranks r_k; the server's ``interference`` is 0.
The update is not kept as an adapter (its rank grows by K r a round): each host adds
scaling * B A to the weights of its shared base model once per round
(:mod:`decaf_ray.node.merged`), and every node restarts from B = 0 and a fresh A, drawn as
at set-up but seeded by the round too. The head is averaged as fedavg does. What travels:
each client's factors up, the stacked rank-K r adapter down.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decaf_ray.algorithms.base import Adapter, Inbox
from decaf_ray.algorithms.fedavg import FedAvg
from decaf_ray.math import mix


def stack_adapters(messages: Sequence[Adapter], weights: Sequence[float]) -> Adapter:
    """B = [B_1 ... B_K] (d, sum r_k) and A = [w_1 A_1; ...; w_K A_K] (sum r_k, k) per
    module, so that B A = sum_k w_k B_k A_k exactly; extras averaged with the weights."""
    w = np.asarray(weights, dtype=np.float64)

    def weighted(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return [(wk * x.astype(np.float64)).astype(x.dtype) for wk, x in zip(w, arrays)]

    mods, first = messages[0].modules, messages[0]
    return Adapter(
        A={m: np.concatenate(weighted([a.A[m] for a in messages])) for m in mods},
        B={m: np.concatenate([a.B[m] for a in messages], axis=1) for m in mods},
        extra={k: mix(w, [a.extra[k] for a in messages]) for k in first.extra},
    )


class FLoRA(FedAvg):
    name = "flora"
    merges = True  # the host adds the server's B A to its base weights; adapters restart
    resets_moments = True  # a fresh adapter: its AdamW moments start over as well

    def aggregate(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> Adapter:
        total = float(sum(sizes))
        return stack_adapters(messages, [s / total for s in sizes])

    def server_interference(self, messages: Sequence[Adapter], sizes: Sequence[int]) -> float:
        return 0.0  # the stack's product is the weighted mean itself

    def combine(self, own: Adapter, inbox: Inbox) -> tuple[Adapter, dict[str, float]]:
        """The node's state after the server's round: its head is the server's mean, B = 0
        (the update now lives in the base); A is kept here and redrawn by the host."""
        ((_, server),) = inbox
        B = {m: np.zeros_like(b) for m, b in own.B.items()}
        return Adapter(A=dict(own.A), B=B, extra=dict(server.extra)), {}
