"""Compute models: virtual seconds per local optimizer step, per node and round.

Every model returns a matrix ``step_s`` of shape (n, rounds): ``step_s[i, t-1]`` is the
virtual duration of one local step of node i in round t, so that round's local work lasts
``tau * step_s[i, t-1]``. Random models draw from ``numpy.random.default_rng(seed)`` only.

- constant:  step_s[i, t] = base
- factors:   step_s[i, t] = base * f_i (one factor per node)
- lognormal: step_s[i, t] = base * exp(sigma Z - sigma^2 / 2), Z ~ N(0, 1) (mean base)
- pareto:    step_s[i, t] = base * (alpha - 1) / alpha * X, X ~ Pareto(x_m = 1, alpha), alpha > 1
             (mean base; heavy tail P(X > x) = x^-alpha)
- trace:     step_s[i, t] = row_i[t mod len(row_i)] from a file with one row per node
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

COMPUTE_MODELS = ("constant", "factors", "lognormal", "pareto", "trace")


def read_trace(path: str | Path, n: int) -> list[np.ndarray]:
    """Per-node seconds-per-step rows of a trace file (whitespace/comma separated, '#' comments).

    Raises:
        ValueError: naming the file, if it is missing, has a row count other than n, or holds
            a value that is not a positive number.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"schedule.trace_path: trace file {str(path)!r} not found")
    rows = []
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        fields = raw.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        try:
            row = np.array([float(x) for x in fields])
        except ValueError as err:
            raise ValueError(f"trace file {str(path)!r} line {lineno}: not a number") from err
        if not np.all(row > 0) or not np.all(np.isfinite(row)):
            raise ValueError(f"trace file {str(path)!r} line {lineno}: seconds must be positive")
        rows.append(row)
    if len(rows) != n:
        raise ValueError(
            f"trace file {str(path)!r} has {len(rows)} rows but the graph has {n} nodes; "
            "write one row of seconds per step for each node"
        )
    return rows


def step_seconds(
    model: str,
    n: int,
    rounds: int,
    base_s: float = 1.0,
    factors: Sequence[float] = (),
    sigma: float = 0.5,
    alpha: float = 2.0,
    trace_path: str | Path | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(n, rounds) virtual seconds per local step under the named compute model. Random
    models draw round after round (all of round 1's nodes, then round 2's), so a run with
    more rounds has the same first rounds: a resumed run may extend ``train.rounds``."""
    rng = np.random.default_rng(seed)
    if model == "constant":
        return np.full((n, rounds), float(base_s))
    if model == "factors":
        f = np.asarray(factors, dtype=np.float64)
        if f.shape != (n,):
            raise ValueError(f"schedule.factors has {f.size} values for {n} nodes")
        return base_s * np.repeat(f[:, None], rounds, axis=1)
    if model == "lognormal":
        z = rng.standard_normal((rounds, n)).T
        return base_s * np.exp(sigma * z - 0.5 * sigma**2)
    if model == "pareto":
        if alpha <= 1.0:
            raise ValueError(f"pareto alpha={alpha} must exceed 1 (finite mean)")
        x = 1.0 + rng.pareto(alpha, size=(rounds, n)).T  # classic Pareto, x_m = 1
        return base_s * (alpha - 1.0) / alpha * x
    if model == "trace":
        if trace_path is None:
            raise ValueError("compute model 'trace' needs schedule.trace_path")
        rows = read_trace(trace_path, n)
        t = np.arange(rounds)
        return np.stack([row[t % len(row)] for row in rows])
    raise ValueError(f"unknown compute model {model!r}; choose one of {COMPUTE_MODELS}")
