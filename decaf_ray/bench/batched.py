"""Sequential vs batched multi-node training on a host, side by side (no Ray involved).

    python -m decaf_ray.bench.batched --nodes 16 64 --device cpu
    python -m decaf_ray.bench.batched --nodes 64 --device cuda --max-rows 4096

For each node count it builds two hosts (the real :class:`~decaf_ray.node.Host`) over the
same nodes, one training them one after another and one in batched groups (so neither path
runs on state the other left: the batched host keeps it stacked), then alternates their
rounds and prints the median seconds per round of each and their ratio, plus the peak memory
of the batched path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from decaf_ray.config import RunConfig, load_config
from decaf_ray.node import Host, HostSpec, RunSpec
from decaf_ray.prepare import prepare


def _config(args: argparse.Namespace, n: int) -> RunConfig:
    sets = [
        f"topology.n={n}",
        f"data.max_length={args.max_length}",
        f"model.name={args.model}",
        f"train.batch_size={args.batch_size}",
        f"train.local_steps={args.local_steps}",
        "data.max_samples=null",
        "data.partition=iid",
        "algorithm.name=decaf",
        f"train.batched_max_rows={args.max_rows}",
        "eval.every=1000",
    ]
    if args.model_path:
        sets.append(f"model.path={args.model_path}")
    return load_config(None, sets)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(args: argparse.Namespace, n: int) -> dict[str, float]:
    cfg = _config(args, n)
    prep = prepare(cfg)
    spec = HostSpec(cfg.model, prep.num_labels, threads=args.threads, device=args.device)
    run = RunSpec.of(cfg, prep.choices, prep.pad_id)
    hosts = {}  # one host per path: a batched host keeps its nodes' state in its own stacks
    for mode in ("off", "on"):
        hosts[mode] = Host(spec)
        train = replace(cfg.train, batched_nodes=mode)
        hosts[mode].setup(replace(run, train=train), prep.shards, prep.eval_set)
    times: dict[str, list[float]] = {"off": [], "on": []}
    peak = 0.0
    for t in range(args.rounds + 1):  # round 0 warms up both paths
        for mode, host in hosts.items():
            if host.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(host.device)
            t0 = time.perf_counter()
            host.train(t)
            _sync(host.device)
            if t:
                times[mode].append(time.perf_counter() - t0)
            if mode == "on" and host.device.type == "cuda":
                peak = max(peak, torch.cuda.max_memory_allocated() / 2**30)
    seq, bat = statistics.median(times["off"]), statistics.median(times["on"])
    return {
        "nodes": n,
        "sequential_s": seq,
        "batched_s": bat,
        "speedup": seq / bat,
        "gpu_peak_gib": peak,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[16])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="minilm", choices=["minilm", "tiny-bert", "path"])
    p.add_argument("--model-path", default=None)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--max-rows", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    print(
        f"device={args.device} model={args.model} max_length={args.max_length} "
        f"batch={args.batch_size} steps={args.local_steps} max_rows={args.max_rows}"
    )
    print(
        f"{'nodes':>6} {'sequential_s':>13} {'batched_s':>10} {'speedup':>8} {'gpu_peak_gib':>13}"
    )
    for n in args.nodes:
        r = bench(args, n)
        print(
            f"{r['nodes']:>6} {r['sequential_s']:>13.3f} {r['batched_s']:>10.3f} "
            f"{r['speedup']:>8.2f} {r['gpu_peak_gib']:>13.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
