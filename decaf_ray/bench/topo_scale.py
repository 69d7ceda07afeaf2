"""How topology building, mixing and checking scale with n (issue 13).

For each size and topology, one fresh process builds the graph, forms the metropolis_hastings
matrix and runs ``check_mixing`` (spectral gap included), and reports the seconds of each
step and its peak resident memory above the process's start (``ru_maxrss``, so numpy,
networkx, SuperLU and ARPACK all count). Only ``topologies`` is imported, so the same file
measures an older checkout: ``PYTHONPATH=<old checkout> python decaf_ray/bench/topo_scale.py``.

    python -m decaf_ray.bench.topo_scale --n 1024 4096 16384 65536
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TOPOLOGIES = ("ring", "torus", "erdos_renyi", "random_regular", "exponential")
SIZES = (1024, 4096, 16384)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def measure(name: str, n: int) -> dict:
    """Seconds of build, mixing and check for one (topology, n), and peak MiB above start."""
    from topologies import build_graph, check_mixing, mixing_matrix

    start_mib = _rss_mib()
    t0 = time.perf_counter()
    G = build_graph(name, n)
    t1 = time.perf_counter()
    Pi = mixing_matrix(G, "metropolis_hastings")
    t2 = time.perf_counter()
    report = check_mixing(Pi, G)
    t3 = time.perf_counter()
    return {
        "topology": name,
        "n": n,
        "format": type(Pi).__name__,
        "build_s": t1 - t0,
        "mixing_s": t2 - t1,
        "check_s": t3 - t2,
        "peak_mib": _rss_mib() - start_mib,
        "spectral_gap": report.spectral_gap,
        "ok": report.ok,
    }


def run(sizes: tuple[int, ...], topologies: tuple[str, ...], timeout_s: float) -> list[dict]:
    """One subprocess per case, so each peak is that case's alone; a case past timeout_s is
    reported with its time as '>timeout'."""
    rows = []
    for n in sizes:
        for name in topologies:
            cmd = [sys.executable, __file__, "--one", name, str(n)]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                rows.append({"topology": name, "n": n, "timeout_s": timeout_s})
                continue
            if out.returncode != 0:
                rows.append({"topology": name, "n": n, "error": out.stderr.strip()[-200:]})
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    if "timeout_s" in r:
        return f"{r['topology']:15s} {r['n']:>7d}  more than {r['timeout_s']:.0f} s"
    if "error" in r:
        return f"{r['topology']:15s} {r['n']:>7d}  error: {r['error']}"
    total = r["build_s"] + r["mixing_s"] + r["check_s"]
    return (
        f"{r['topology']:15s} {r['n']:>7d} {r['format']:>10s} {r['build_s']:8.2f} "
        f"{r['mixing_s']:8.2f} {r['check_s']:8.2f} {total:8.2f} {r['peak_mib']:9.1f} "
        f"{r['spectral_gap']:11.4g}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--topologies", nargs="+", default=list(TOPOLOGIES))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    p.add_argument("--one", nargs=2, metavar=("TOPOLOGY", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return 0
    print(
        f"{'topology':15s} {'n':>7s} {'format':>10s} {'build_s':>8s} {'mixing_s':>8s} "
        f"{'check_s':>8s} {'total_s':>8s} {'peak_MiB':>9s} {'gap':>11s}"
    )
    run(tuple(args.n), tuple(args.topologies), args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
