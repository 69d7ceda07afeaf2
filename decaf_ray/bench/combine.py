"""A host's combine: one node at a time vs the batched ``combine_all``, side by side.

    python -m decaf_ray.bench.combine                     # decaf and dlora, both shapes
    python -m decaf_ray.bench.combine --nodes 4096 --repeats 5 --algorithms decaf

Each shape gets N nodes on a ring (inboxes of 3 messages, weight 1/3) with random float32
factors of rank 4 and a classifier head, as a host holding N nodes would see them. Both paths
run in the same process, alternating, on one thread; the figures are the best of
``--repeats`` in milliseconds per node, and their ratio. Results are checked equal first.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from decaf_ray.algorithms import REGISTRY, Adapter

SHAPES = {  # name: (width d = k of each module, modules): the models' query/value layers
    "tiny-bert": (32, 4),
    "minilm": (384, 12),
}


def ring_inboxes(n: int, d: int, modules: int, seed: int = 0, rank: int = 4):
    """n nodes' own adapters and ring inboxes (left, self, right at 1/3 each)."""
    rng = np.random.default_rng(seed)

    def adapter() -> Adapter:
        names = [f"layer{i}" for i in range(modules)]
        return Adapter(
            A={m: rng.standard_normal((rank, d)).astype(np.float32) for m in names},
            B={m: rng.standard_normal((d, rank)).astype(np.float32) for m in names},
            extra={"head": rng.standard_normal((5, d)).astype(np.float32)},
        )

    nodes = [adapter() for _ in range(n)]
    inboxes = [[(1 / 3, nodes[(i + j) % n]) for j in (-1, 0, 1)] for i in range(n)]
    return nodes, inboxes


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def compare(shape: str, n: int, repeats: int, algorithm: str = "decaf") -> dict[str, float]:
    """ms per node of both paths of ``algorithm`` over ``n`` nodes of ``shape``, and the
    ratio."""
    d, modules = SHAPES[shape]
    owns, inboxes = ring_inboxes(n, d, modules)
    algo = REGISTRY[algorithm]()
    one = [algo.combine(o, ib) for o, ib in zip(owns[:8], inboxes[:8])]
    for (a, _), (b, _) in zip(one, algo.combine_all(owns[:8], inboxes[:8])):
        for m in a.modules:
            np.testing.assert_allclose(a.B[m], b.B[m], rtol=1e-4, atol=1e-5)
    times = {"one_at_a_time": 0.0, "batched": 0.0}
    for name, fn in (
        ("one_at_a_time", lambda: [algo.combine(o, ib) for o, ib in zip(owns, inboxes)]),
        ("batched", lambda: algo.combine_all(owns, inboxes)),
    ):
        times[name] = _best(fn, repeats) / n * 1e3
    return {**times, "ratio": times["one_at_a_time"] / times["batched"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m decaf_ray.bench.combine",
        description="A host's combine, one node at a time vs batched (ms per node).",
    )
    parser.add_argument(
        "--algorithms", nargs="+", choices=["decaf", "dlora"], default=["decaf", "dlora"]
    )
    parser.add_argument("--nodes", type=int, default=1024, help="nodes on the host (1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (3)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    head = f"{'method':<7} {'shape':<10} {'nodes':>6} {'one at a time':>14} {'batched':>9}"
    print(f"{head} {'ratio':>6}")
    for algorithm in args.algorithms:
        for shape in args.shapes:
            n = args.nodes if shape == "tiny-bert" else min(args.nodes, 256)
            r = compare(shape, n, args.repeats, algorithm)
            print(
                f"{algorithm:<7} {shape:<10} {n:>6} {r['one_at_a_time']:>11.3f} ms "
                f"{r['batched']:>6.3f} ms {r['ratio']:>5.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
