"""Node churn: which nodes take part in each round.

``active_table`` returns (n, rounds) booleans, ``active[i, t - 1]`` True when node i works in
round t. A schedule entry ``(node, leave, rejoin)`` makes the node absent in rounds
leave .. rejoin - 1. At random, each present node leaves at the start of a round with
probability ``p_leave`` and stays away ``down_rounds`` rounds. A node is *rejoining* in round t
when it is present in t and was absent in t - 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def active_table(
    n: int,
    rounds: int,
    schedule: Sequence[Sequence[int]] = (),
    p_leave: float = 0.0,
    down_rounds: int = 1,
    seed: int = 0,
) -> np.ndarray:
    active = np.ones((n, rounds), dtype=bool)
    for entry in schedule:
        node, leave, rejoin = (int(x) for x in entry)
        if not 0 <= node < n:
            raise ValueError(f"churn entry {list(entry)}: node {node} is not in 0..{n - 1}")
        active[node, max(leave, 1) - 1 : max(rejoin, 1) - 1] = False
    if p_leave > 0:
        rng = np.random.default_rng(seed)
        draws = rng.random((rounds, n)).T  # round by round: more rounds keep the first ones
        for i in range(n):
            t = 0
            while t < rounds:
                if active[i, t] and draws[i, t] < p_leave:
                    active[i, t : t + down_rounds] = False
                    t += down_rounds
                else:
                    t += 1
    return active


def rejoining(active: np.ndarray, node: int, round_idx: int) -> bool:
    """True when ``node`` is present in ``round_idx`` (1-based) after an absent round."""
    t = round_idx - 1
    return t > 0 and bool(active[node, t]) and not bool(active[node, t - 1])
