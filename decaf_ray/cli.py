"""Command line: ``decaf-ray run``, ``resume``, ``topologies``, ``bench``, ``report``, ``export``.

Errors a user can fix (bad config, missing data, invalid graph) are printed as one message
with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  decaf-ray run runs/demo.yaml
  decaf-ray run runs/paper_ring_noniid.yaml --set train.rounds=5 --set topology.n=16
  decaf-ray run runs/straggler_study.yaml             # sync vs async vs bounded
  decaf-ray run runs/llm_demo.yaml                    # SmolLM2 as a causal LM, 5 methods
  decaf-ray run runs/demo.yaml --address auto          # join a running Ray cluster
  decaf-ray resume runs/out/demo-20261201-101500      # go on after a stop or a crash
  decaf-ray topologies --n 16
  decaf-ray report runs/out/demo-20261201-101500      # report.md, figures, CSV tables
  decaf-ray export runs/out/demo-20261201-101500 --to tensorboard   # or --to mlflow
Results go to runs/out/<name>-<time>/ (config.yaml, metrics.parquet, summary.csv);
read them with analysis.read_runs(folder)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="decaf-ray",
        description="Simulate decentralized LoRA fine-tuning (DeCAF, dLoRA, FedIT...) on Ray.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (bad input too)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="run an experiment from a YAML config",
        description="Run the config (and each combination of its 'sweep').",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    r.add_argument("config", help="YAML config file, e.g. runs/demo.yaml")
    _add_run_options(
        r,
        "override a config value, e.g. --set train.lr=1e-4 (repeatable; the value is read as YAML)",
    )
    r.add_argument("--out", default=None, help="result folder (default: output.dir/<name>-<time>)")
    r.add_argument(
        "--address",
        default=None,
        help="join a Ray cluster ('auto' or HOST:PORT) instead of starting one",
    )
    _add_resume_parser(sub)
    t = sub.add_parser(
        "topologies",
        help="list graph builders and mixing rules",
        description="List topology builders and, for n nodes, the spectral gap "
        "1 - |lambda_2| of each rule (larger gap = faster gossip).",
    )
    t.add_argument("--n", type=int, default=16, help="number of nodes (default 16)")
    _add_bench_parser(sub)
    _add_report_parser(sub)
    _add_export_parser(sub)
    return p


def _add_resume_parser(sub) -> None:
    r = sub.add_parser(
        "resume",
        help="go on with a stopped run or sweep from its latest checkpoint",
        description="Continue the run (or sweep) in FOLDER from its latest checkpoint "
        "(checkpoint.every rounds; also written when a run is stopped and at its end). The "
        "metrics equal those of a run that was never stopped. A sweep resumes run by run: "
        "finished runs are kept, unstarted ones run. The config is the folder's own; --set "
        "may change only train.rounds (to extend a run; constant lr schedule), "
        "output.progress / save_adapters, cluster.address / num_cpus and checkpoint.every / "
        "keep: any other change is refused, naming the keys.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  decaf-ray resume runs/out/demo-20261201-101500\n"
        "  decaf-ray resume runs/out/demo-20261201-101500/demo-decaf --set train.rounds=20",
    )
    r.add_argument("folder", help="a run or sweep folder written by `decaf-ray run`")
    _add_run_options(r, "change an allowed key, e.g. --set train.rounds=20 (repeatable)")


def _add_run_options(parser: argparse.ArgumentParser, set_help: str) -> None:
    """--set and --no-progress, shared by run and resume."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_bench_parser(sub) -> None:
    from decaf_ray.bench.options import BenchOptions, ScaleOptions

    d = BenchOptions()
    b = sub.add_parser(
        "bench",
        help="measure simulator overhead vs bare compute, memory per node, TSVD speed-up",
        description="Simulated decaf rounds (ring, MiniLM + LoRA r=8) side by side with the "
        "same local steps in bare torch; memory per added node; start and phase times; "
        "factored vs dense TSVD. Writes bench.txt, bench.csv and rounds.csv to "
        "runs/out/bench-<time>/. Full size: --nodes 16 64 256 --max-length 64 --local-steps 1",
    )
    b.add_argument("--nodes", type=int, nargs="+", default=list(d.nodes), help="node counts")
    b.add_argument("--max-length", type=int, default=d.max_length, help="tokens per text")
    b.add_argument("--batch-size", type=int, default=d.batch_size)
    b.add_argument("--local-steps", type=int, default=d.local_steps, help="tau per round")
    b.add_argument(
        "--rounds",
        type=_at_least_1,
        default=d.rounds,
        help="turns per size (1st: one warm-up round)",
    )
    b.add_argument(
        "--span",
        type=_at_least_1,
        default=d.span,
        help="rounds the simulator and each floor run in a row per turn: a run overlaps a "
        "round's metrics with the next round's training, which 1 (round by round) hides",
    )
    b.add_argument(
        "--small-nodes",
        type=int,
        nargs="*",
        default=list(d.small_nodes),
        help="node counts of the small-compute regime (max_length 32, batch 4); none to skip",
    )
    b.add_argument(
        "--llm-nodes",
        type=int,
        nargs="*",
        default=list(d.llm_nodes),
        help="node counts of the SmolLM2 causal-LM regime (max_length 48, batch 2; memory per "
        "node from the first to the last); none to skip",
    )
    b.add_argument("--tsvd-dim", type=int, default=d.tsvd_dim, help="d of the d x d TSVD")
    b.add_argument("--tsvd-dense-repeats", type=int, default=d.tsvd_dense_repeats)
    b.add_argument("--num-cpus", type=int, default=d.num_cpus, help="CPUs of the local Ray")
    b.add_argument("--out", default=d.out_dir, help="parent folder of the run folder")
    s = ScaleOptions()
    g = b.add_argument_group(
        "scaling curve (--scale)",
        "the tiny model at growing n, each size in a guarded child process, one after "
        "another; writes scale.csv and scale.txt to runs/out/bench-scale-<time>/. Full size: "
        "--scale --scale-nodes 256 1024 4096 16384",
    )
    g.add_argument(
        "--scale", action="store_true", help="measure the scaling curve (only it) instead"
    )
    g.add_argument("--scale-nodes", type=int, nargs="+", default=list(s.nodes), help="node counts")
    g.add_argument(
        "--scale-rounds", type=int, default=s.rounds, help="rounds per size (1st: warm-up)"
    )
    g.add_argument(
        "--samples-per-node",
        type=int,
        default=s.samples_per_node,
        help="articles each node draws (shards overlap)",
    )
    g.add_argument(
        "--size-timeout-s", type=float, default=s.timeout_s, help="time guard of one size"
    )
    g.add_argument(
        "--memory-gib",
        type=float,
        default=s.memory_gib,
        help="memory guard of one size's processes (default: 60%% of what is free)",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from decaf_ray.config import load_config
    from decaf_ray.runner import run

    overrides = list(args.overrides)
    if args.address:
        overrides.append(f"cluster.address={args.address}")
    if args.no_progress:
        overrides.append("output.progress=false")
    cfg = load_config(args.config, overrides)
    return _simulate(lambda: run(cfg, args.out), args.debug)


def _cmd_resume(args: argparse.Namespace) -> int:
    from decaf_ray.runner import resume

    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("output.progress=false")
    return _simulate(lambda: resume(args.folder, overrides), args.debug)


def _simulate(start, debug: bool = False) -> int:
    """Run ``start()`` (a run or a resume) with signals handled; print its summary table."""
    from decaf_ray.engine import stopping
    from decaf_ray.engine.hosts import HostError

    stopping.install()  # SIGINT / SIGTERM: stop after the round in flight
    try:
        root, table = start()
    except stopping.RunStopped as stop:
        print(
            f"decaf-ray: {stop}; its metrics and a checkpoint of round {stop.round_idx} are "
            f"in {stop.folder}\nresume with: decaf-ray resume {stop.folder}",
            file=sys.stderr,
        )
        return stop.exit_code
    except HostError as exc:
        if debug or not exc.lost or exc.folder is None:
            raise
        print(
            f"decaf-ray: error: {exc}\nthe hosts were lost and not recovered (cluster.restarts); "
            f"resume with: decaf-ray resume {exc.folder}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            "decaf-ray: stopped at once; metrics of completed rounds and the latest checkpoint "
            "are saved (decaf-ray resume FOLDER goes on from it)",
            file=sys.stderr,
        )
        return 130
    import pandas as pd

    with pd.option_context(
        "display.width", 120, "display.max_columns", 20, "display.float_format", "{:.4g}".format
    ):
        print("\n" + table.to_string())
    print(f"\nresults: {root}  (read with analysis.read_runs({str(root)!r}))")
    return 0


def _gap_cell(gap: float) -> str:
    """0.0507 as before; gaps below 1e-3 (rings of thousands of nodes) as 4.902e-08."""
    return f"{gap:22.4f}" if gap >= 1e-3 else f"{gap:22.3e}"


def _cmd_topologies(args: argparse.Namespace) -> int:
    from topologies import BUILDERS, MIXING_RULES, build_graph, check_mixing, mixing_matrix

    rules = [r for r in MIXING_RULES if r != "edge_weights"]
    print(f"spectral gap 1 - |lambda_2| for n = {args.n} ('-': rule invalid on this graph)")
    print(f"{'topology':16s}" + "".join(f"{r:>22s}" for r in rules))
    for name in BUILDERS:
        if name == "file":
            continue
        try:
            g = build_graph(name, args.n)
        except ValueError as exc:
            print(f"{name:16s}  ({exc})")
            continue
        cells = []
        for rule in rules:
            try:
                rep = check_mixing(mixing_matrix(g, rule), g)
            except ValueError:  # a rule defined on one graph only (dimat: two_hubs)
                rep = None
            ok = rep is not None and rep.ok
            cells.append(_gap_cell(rep.spectral_gap) if ok else f"{'-':>22s}")
        print(f"{name:16s}" + "".join(cells))
    print(
        "\nalso: name 'file' with topology.path = an edge list or GraphML file "
        "(mixing 'edge_weights' reads the 'weight' attribute)"
    )
    return 0


def _at_least_1(text: str) -> int:
    """An integer option that counts something (rounds, turns): 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_bench(args: argparse.Namespace) -> int:
    from decaf_ray.bench.options import BenchOptions, ScaleOptions
    from decaf_ray.bench.overhead import run_bench

    if args.scale:
        from decaf_ray.bench.scale import run_scale

        root, text = run_scale(
            ScaleOptions(
                nodes=tuple(args.scale_nodes),
                rounds=args.scale_rounds,
                samples_per_node=args.samples_per_node,
                timeout_s=args.size_timeout_s,
                memory_gib=args.memory_gib,
                num_cpus=args.num_cpus,
                out_dir=args.out,
            )
        )
        print(text)
        print(f"\nresults: {root}")
        return 0
    opts = BenchOptions(
        nodes=tuple(args.nodes),
        max_length=args.max_length,
        batch_size=args.batch_size,
        local_steps=args.local_steps,
        rounds=args.rounds,
        span=args.span,
        small_nodes=tuple(args.small_nodes),
        llm_nodes=tuple(args.llm_nodes),
        tsvd_dim=args.tsvd_dim,
        tsvd_dense_repeats=args.tsvd_dense_repeats,
        num_cpus=args.num_cpus,
        out_dir=args.out,
    )
    root, text = run_bench(opts)
    print(text)
    print(f"\nresults: {root}")
    return 0


def _add_report_parser(sub) -> None:
    r = sub.add_parser(
        "report",
        help="write report.md, figures and summary tables of finished runs",
        description="Read every run under the given run or sweep folders and write a report "
        "folder: report.md (what was run, final values over seeds with 95% intervals, the "
        "figures), one PNG per figure the runs have data for (consensus error, accuracy, "
        "interference, spectral gap, label histograms, accuracy vs bytes, time to target), "
        "summary.csv (each run's final and best values) and by_method.csv (mean, std, n, 95% "
        "half-width over seeds). Needs matplotlib: pip install 'decaf-ray[plot]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  decaf-ray report runs/out/demo-20261201-101500\n"
        "  decaf-ray report runs/out/ring-... runs/out/complete-... --out runs/out/compare",
    )
    r.add_argument("folders", nargs="+", metavar="FOLDER", help="a run or sweep folder")
    r.add_argument("--out", default=None, help="report folder (default: FIRST_FOLDER/report)")


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        from analysis.report import write_report
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        print(
            "decaf-ray: error: the report draws with matplotlib, which is not installed: "
            "install the plot extra: pip install 'decaf-ray[plot]'",
            file=sys.stderr,
        )
        return 2
    print(f"report: {write_report(args.folders, args.out)}")
    return 0


def _add_export_parser(sub) -> None:
    e = sub.add_parser(
        "export",
        help="write finished runs' metrics for TensorBoard or MLflow",
        description="Read every run under the given run or sweep folders (config.yaml, "
        "metrics.parquet) and write them for TensorBoard (one event folder per run: "
        "network/<metric> and node/<i>/<metric> scalars per round, the config as text and "
        "hparams; needs pip install 'decaf-ray[export]') or MLflow (an offline file store, one "
        "experiment per folder: params from the config, metrics with step = round; needs pip "
        "install 'decaf-ray[mlflow]'). Exporting a run again replaces its earlier export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  decaf-ray export runs/out/demo-20261201-101500 --to tensorboard\n"
        "  tensorboard --logdir runs/out/demo-20261201-101500/tensorboard\n"
        "  decaf-ray export runs/out/demo-20261201-101500 --to mlflow --out runs/out/mlruns",
    )
    e.add_argument("folders", nargs="+", metavar="FOLDER", help="a run or sweep folder")
    e.add_argument("--to", required=True, metavar="TARGET", help="tensorboard or mlflow")
    e.add_argument(
        "--out",
        default=None,
        help="where to write (default: FIRST_FOLDER/tensorboard or FIRST_FOLDER/mlruns)",
    )
    e.add_argument(
        "--no-nodes", action="store_true", help="only the network series, not each node's"
    )


def _cmd_export(args: argparse.Namespace) -> int:
    from analysis.export import MissingExtra, export

    try:
        out = export(args.folders, args.to, args.out, nodes=not args.no_nodes)
    except MissingExtra as exc:
        print(f"decaf-ray: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.to}: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "resume":
            return _cmd_resume(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "export":
            return _cmd_export(args)
        if args.command == "bench":
            return _cmd_bench(args)
        return _cmd_topologies(args)
    except (ValueError, FileNotFoundError) as exc:  # bad input: one clear line
        if args.debug:
            raise
        print(f"decaf-ray: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
