"""Stragglers: a seeded fraction of nodes whose local steps are slower by a factor.

``straggler_factors`` returns an (n, rounds) multiplier: ``factor`` for the
``round(fraction * n)`` stragglers, 1 elsewhere. With ``every = 0`` the set is drawn once and
fixed; with ``every = k`` it is re-drawn at rounds 1, k + 1, 2k + 1, ...
"""

from __future__ import annotations

import numpy as np


def straggler_factors(
    n: int, rounds: int, fraction: float, factor: float, every: int = 0, seed: int = 0
) -> np.ndarray:
    """(n, rounds) step-time multipliers; column t - 1 applies to round t."""
    out = np.ones((n, rounds))
    count = int(round(fraction * n))
    if count == 0 or factor == 1.0:
        return out
    rng = np.random.default_rng(seed)
    period = every if every > 0 else rounds
    for start in range(0, rounds, period):
        slow = rng.choice(n, size=count, replace=False)
        out[slow, start : start + period] = factor
    return out
