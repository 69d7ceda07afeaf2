"""Links: message delay and loss.

Delay of a message of b bytes: ``latency_s + b / bandwidth_bytes_s`` (no bandwidth: infinite).
Loss: each message j -> i of round t is lost independently with probability p_ji (one global p,
overridden per undirected link). The draws are a fixed (rounds, n, n) table from the seed, so
whether a message is lost never depends on the order in which events are processed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinkModel:
    latency_s: float = 0.0
    bandwidth_bytes_s: float | None = None

    def delay_s(self, nbytes: float) -> float:
        """latency + bytes / bandwidth."""
        if not self.bandwidth_bytes_s:
            return self.latency_s
        return self.latency_s + nbytes / self.bandwidth_bytes_s


def parse_link(key: str) -> tuple[int, int]:
    """``"u-v"`` -> (min, max) node ids of an undirected link; ValueError if malformed."""
    parts = str(key).split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"link {key!r} should be written 'u-v' with two node ids, e.g. '0-1'")
    u, v = int(parts[0]), int(parts[1])
    return min(u, v), max(u, v)


def loss_table(
    n: int, rounds: int, p: float, per_link: Mapping[str, float], seed: int
) -> np.ndarray:
    """(rounds, n, n) booleans: ``lost[t - 1, j, i]``: j's round-t message to i is lost."""
    P = np.full((n, n), float(p))
    for key, prob in per_link.items():
        u, v = parse_link(key)
        P[u, v] = P[v, u] = float(prob)
    draws = np.random.default_rng(seed).random((rounds, n, n))
    return draws < P[None, :, :]
