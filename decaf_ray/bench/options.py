"""The options of ``decaf-ray bench``, apart from the benchmark itself.

The command line builds its parser from these defaults, so ``decaf-ray --help`` reads them
without importing torch, pandas or Ray.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchOptions:
    nodes: tuple[int, ...] = (16, 64)
    max_length: int = 64
    batch_size: int = 16
    local_steps: int = 1
    rounds: int = 4  # turns per size; the first is a warm-up round
    span: int = 2  # rounds a contender runs per turn (>= 2: a round's metrics overlap the next)
    small_nodes: tuple[int, ...] = (64,)  # small-compute regime; () skips it
    small_max_length: int = 32
    small_batch_size: int = 4
    llm_nodes: tuple[int, ...] = (8, 16)  # SmolLM2 as a causal LM; () skips it
    llm_max_length: int = 48
    llm_batch_size: int = 2
    tsvd_dim: int = 4096
    tsvd_neighbours: int = 5
    tsvd_rank: int = 8
    tsvd_repeats: int = 7  # factored TSVD (milliseconds)
    tsvd_dense_repeats: int = 1  # dense TSVD (a minute or two at 4096 on 2 cores)
    num_cpus: int | None = None  # CPUs of the local Ray cluster (None: all)
    seed: int = 0
    out_dir: str = "runs/out"


@dataclass(frozen=True)
class ScaleOptions:
    """``decaf-ray bench --scale``: the tiny model at growing n, one size at a time.

    Each node draws ``samples_per_node`` BBC News articles (shards overlap), so n may exceed
    the 2,225 articles. The full curve of issue 13 is ``nodes=(256, 1024, 4096, 16384)``."""

    nodes: tuple[int, ...] = (256, 1024)
    rounds: int = 3  # per size; the first is warm-up, evaluation runs after the last
    samples_per_node: int = 4
    max_length: int = 16
    batch_size: int = 4
    local_steps: int = 1
    timeout_s: float = 900.0  # per size, start to finish
    memory_gib: float | None = None  # the guard's limit (None: 60% of what is free at start)
    num_cpus: int | None = None
    seed: int = 0
    out_dir: str = "runs/out"
