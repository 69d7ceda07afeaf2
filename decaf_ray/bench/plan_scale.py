"""How planning scales with n: plan ``async`` and ``sync`` on a ring, print seconds and memory.

``python -m decaf_ray.bench.plan_scale [--nodes 1024 16384] [--rounds 50]`` runs each
(mode, n) in a fresh process: it builds the ring's mixing matrix as a scipy.sparse CSR array
(dense at n <= 4,096 for planners that need one), the world (tiny step times: lognormal with
mean 1 ms, latency 0.1 ms, 5% losses) and consumes the whole plan the way the executor does (a
:class:`~decaf_ray.virtual.PlanStream` pulled one round at a time, steps dropped once taken),
or, on a version without streams, with ``make_plan``. It prints the planning seconds and the
process's peak RSS above what it held before planning (``ru_maxrss``: the plan's own memory;
a version whose world draws a dense loss table peaks before planning) and the whole peak.
Wall times on a shared machine are noisy; compare ratios measured side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp


def ring(n: int, dense: bool):
    """The ring's uniform mixing matrix: Pi_ii = Pi_i,i±1 = 1/3."""
    i = np.arange(n)
    rows = np.concatenate([i, i, i])
    cols = np.concatenate([i, (i + 1) % n, (i - 1) % n])
    Pi = sp.csr_array((np.full(3 * n, 1 / 3), (rows, cols)), shape=(n, n))
    return Pi.toarray() if dense else Pi


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, n: int, rounds: int) -> dict:
    """Plan one (mode, n) here; seconds and peak RSS (MiB) before and after planning."""
    from decaf_ray.config import config_from_dict
    from decaf_ray.virtual import build_world

    cfg = config_from_dict(
        {
            "topology": {"name": "ring", "n": n, "mixing": "uniform"},
            "train": {"rounds": rounds, "local_steps": 1},
            "schedule": {
                "mode": mode,
                "compute": "lognormal",
                "step_s": 1e-3,
                "latency_s": 1e-4,
                "loss_p": 0.05,
            },
        }
    )
    try:
        from decaf_ray.virtual import PlanStream
    except ImportError:  # a version that plans everything up front
        PlanStream = None
    t0 = time.perf_counter()
    world = build_world(cfg, ring(n, dense=PlanStream is None))
    world_s = time.perf_counter() - t0
    before = _peak_mib()
    t0 = time.perf_counter()
    steps = 0
    if PlanStream is None:
        from decaf_ray.virtual import make_plan

        steps = len(make_plan(world, mode, 1e5, cfg.schedule).steps)
    else:
        stream = PlanStream(world, mode, 1e5, cfg.schedule)
        t = 0
        while not stream.exhausted:
            t += 1
            stream.pull(t)
            steps += len(stream.take())
    return {
        "mode": mode,
        "n": n,
        "rounds": rounds,
        "steps": steps,
        "world_s": round(world_s, 2),
        "plan_s": round(time.perf_counter() - t0, 2),
        "rss_before_mib": round(before),
        "plan_peak_mib": round(_peak_mib() - before),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1024, 16384])
    parser.add_argument("--modes", nargs="+", default=["async", "sync"])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # mode n: in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.rounds)))
        return
    head = f"{'mode':>6} {'n':>6} {'steps':>8} {'world s':>8} {'plan s':>8} {'plan MiB':>9}"
    print(f"{head} {'peak MiB':>9}")
    for n in args.nodes:
        for mode in args.modes:
            cmd = [sys.executable, "-m", "decaf_ray.bench.plan_scale", "--one", mode, str(n)]
            out = subprocess.run(
                [*cmd, "--rounds", str(args.rounds)], capture_output=True, text=True
            )
            if out.returncode:
                print(f"{mode:>6} {n:>6} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout)
            print(
                f"{mode:>6} {n:>6} {r['steps']:>8} {r['world_s']:>8} {r['plan_s']:>8} "
                f"{r['plan_peak_mib']:>9} {r['rss_before_mib'] + r['plan_peak_mib']:>9}"
            )


if __name__ == "__main__":
    main()
