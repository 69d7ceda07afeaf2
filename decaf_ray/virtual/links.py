"""Links: message delay and loss.

Delay of a message of b bytes: ``latency_s + b / bandwidth_bytes_s`` (no bandwidth: infinite);
b is the sender's message size in that round, so nodes of different ranks (and rolora's
rounds of B and of A) take different times.
Loss: each message j -> i of round t is lost independently with probability p_ji (one global p,
overridden per undirected link). The draws are fixed by the seed, so whether a message is lost
never depends on the order in which events are processed: message (t, j, i) is lost when
u < p_ji, u the uniform at position ((t - 1) n + j) n + i of the seed's PCG64 stream, which is
entry [t - 1, j, i] of the dense (rounds, n, n) table ``loss_table`` draws. :class:`LossModel`
draws the same values lazily, one round at a time and only on the round's links (the stream
jumped to each link's position), so n = 16,384 costs O(links) per round instead of n^2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# a message's size in bytes: one for all nodes, one per node, or per node and round of a cycle
MessageSizes = float | Sequence[float] | Sequence[Sequence[float]]


@dataclass(frozen=True)
class LinkModel:
    latency_s: float = 0.0
    bandwidth_bytes_s: float | None = None

    def delays_s(self, nbytes: MessageSizes, n: int) -> np.ndarray:
        """(n, P) delay, latency + bytes / bandwidth, of each node's messages in the rounds of
        a cycle of P (column c: rounds c + 1, c + 1 + P, ...). ``nbytes`` is one size for every
        node and round, one per node (heterogeneous ranks), or one row of P sizes per node
        (rolora sends B in odd rounds and A in even ones)."""
        sizes = np.asarray(nbytes, dtype=np.float64)
        if sizes.ndim < 2:
            sizes = np.broadcast_to(sizes, (n,))[:, None]
        sizes = np.broadcast_to(sizes, (n, sizes.shape[1]))
        if not self.bandwidth_bytes_s:
            return np.full(sizes.shape, float(self.latency_s))
        return self.latency_s + sizes / self.bandwidth_bytes_s


def parse_link(key: str) -> tuple[int, int]:
    """``"u-v"`` -> (min, max) node ids of an undirected link; ValueError if malformed."""
    parts = str(key).split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"link {key!r} should be written 'u-v' with two node ids, e.g. '0-1'")
    u, v = int(parts[0]), int(parts[1])
    return min(u, v), max(u, v)


@dataclass(frozen=True)
class LossModel:
    """Message losses of n nodes under probability ``p`` and per-link overrides ``per_link``
    ({(u, v): p}, u < v), drawn from ``seed``: the values of :func:`loss_table`, lazily."""

    n: int
    p: float = 0.0
    per_link: Mapping[tuple[int, int], float] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def of(cls, n: int, p: float, per_link: Mapping[str, float], seed: int) -> LossModel:
        """From the config's spelling of per-link overrides ({"u-v": p})."""
        return cls(n, float(p), {parse_link(k): float(q) for k, q in per_link.items()}, seed)

    @property
    def lossless(self) -> bool:
        return self.p <= 0.0 and all(q <= 0.0 for q in self.per_link.values())

    def lost(self, round_idx: int, links: np.ndarray) -> frozenset[int]:
        """Flat ids j * n + i of the lost messages of round ``round_idx`` (1-based) among
        ``links``, an (L, 2) array of (sender j, receiver i) sorted by (j, i)."""
        if self.lossless or len(links) == 0:
            return frozenset()
        n, j, i = self.n, links[:, 0], links[:, 1]
        if self.per_link:
            lo, hi = np.minimum(j, i).tolist(), np.maximum(j, i).tolist()
            P = np.array([self.per_link.get(k, self.p) for k in zip(lo, hi)])
        else:
            P = np.full(len(links), self.p)
        lost = P >= 1.0  # u < 1 always: no draw needed
        drawn = (P > 0.0) & ~lost
        offsets = ((round_idx - 1) * n + j[drawn]) * n + i[drawn]
        lost[drawn] = _uniforms_at(self.seed, offsets) < P[drawn]
        return frozenset((j[lost] * n + i[lost]).tolist())


_RUN = 1024  # offsets closer than this are drawn in one block rather than jumped to


def _uniforms_at(seed: int, offsets: np.ndarray) -> np.ndarray:
    """The float64 uniforms at ascending ``offsets`` of ``default_rng(seed).random``'s stream:
    u = (x >> 11) 2^-53 for the PCG64 output x there (one 64-bit output per uniform)."""
    bits = np.random.PCG64(seed)
    out = np.empty(len(offsets), dtype=np.uint64)
    pos, k, offs = 0, 0, offsets.tolist()
    while k < len(offs):
        end = k
        while end + 1 < len(offs) and offs[end + 1] - offs[k] < _RUN:
            end += 1
        if offs[k] > pos:
            bits.advance(offs[k] - pos)
        raw = bits.random_raw(offs[end] - offs[k] + 1)
        out[k : end + 1] = raw[np.asarray(offs[k : end + 1]) - offs[k]]
        pos, k = offs[end] + 1, end + 1
    return (out >> np.uint64(11)).astype(np.float64) * 2.0**-53


def loss_table(
    n: int, rounds: int, p: float, per_link: Mapping[str, float], seed: int
) -> np.ndarray:
    """(rounds, n, n) booleans: ``lost[t - 1, j, i]``: j's round-t message to i is lost (the
    dense reference of :class:`LossModel`; O(rounds n^2) memory, small n only)."""
    P = np.full((n, n), float(p))
    for key, prob in per_link.items():
        u, v = parse_link(key)
        P[u, v] = P[v, u] = float(prob)
    draws = np.random.default_rng(seed).random((rounds, n, n))
    return draws < P[None, :, :]
