"""``decaf-ray report``: one folder with a markdown page, its figures and summary tables.

>>> from analysis import write_report
>>> write_report(["runs/out/demo-20261125-170000"])   # -> .../demo-20261125-170000/report
PosixPath('runs/out/demo-20261125-170000/report/report.md')

The folder holds ``report.md`` (what was run, the summary over seeds, the figures), one PNG per
figure that the runs have data for, ``summary.csv`` (final and best values of each run) and
``by_method.csv`` (their mean, std, n and 95% half-width over seeds); both start with the
``group`` column, the label of the run's group (``analysis.labels``) that the figures use;
and ``wall.csv``, where each run's wall time per round went (:mod:`analysis.wall`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from analysis.figures import FIGURES, partition_runs, plot_label_histogram
from analysis.labels import run_labels
from analysis.reader import check_roots, read_runs
from analysis.series import SEED
from analysis.summary import Summary, by_setting, summarise
from analysis.wall import wall_table

DPI = 120
MAX_HISTOGRAMS = 4  # label histograms drawn at most (one per distinct partition)
_CAPTIONS = {
    "consensus": "Product consensus error per round and per virtual second (log scale).",
    "accuracy": "Held-out accuracy: mean over the nodes' models, their macro-F1, and the "
    "network-average model.",
    "interference": "What averaging the factors misses (interference), beside the energy "
    "decaf's truncated SVD drops.",
    "spectral_gap": "Final consensus error against the spectral gap of each topology.",
    "rank": "A rank ablation: consensus error, interference, TSVD tail and accuracy against "
    "the LoRA rank.",
    "accuracy_vs_bytes": "Mean node accuracy against the data all nodes have sent.",
    "time_to_target": "Virtual time each schedule takes to reach a consensus level every run "
    "reaches.",
}
_HEADLINE = ("mean_node_acc", "mean_node_f1", "eval_acc", "product_consensus", "train_loss")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats with four significant digits."""

    def cell(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell(v) for v in line) + " |" for line in lines)


def _values(frame: pd.DataFrame, col: str) -> str:
    if col not in frame:
        return "-"
    return ", ".join(sorted(frame.drop_duplicates("run")[col].astype(str).unique()))


def _what_was_run(frame: pd.DataFrame, roots: list[Path], labels: pd.Series) -> str:
    per_run = frame.drop_duplicates("run")
    items = [
        ("runs", f"{len(per_run)} from {', '.join(f'`{r}`' for r in roots)}"),
        ("methods", _values(frame, "algorithm.name")),
        ("topology", f"{_values(frame, 'topology.name')} ({_values(frame, 'topology.mixing')})"),
        ("nodes", _values(frame, "topology.n")),
        ("rounds", f"{_values(frame, 'train.rounds')} (logged up to {frame['round'].max()})"),
        ("seeds", _values(frame, SEED)),
        ("schedule", _values(frame, "schedule.mode")),
        ("data", f"{_values(frame, 'data.source')}, {_values(frame, 'data.partition')}"),
        ("model", f"{_values(frame, 'model.name')}, LoRA r = {_values(frame, 'model.r')}"),
        ("groups", f"{labels.nunique()} ({'; '.join(sorted(labels.unique()))})"),
    ]
    return "\n".join(f"- **{k}**: {v}" for k, v in items)


def _group_labels(summary: Summary, labels: pd.Series) -> pd.DataFrame:
    """The label of each group: columns group_columns and label, one row per group."""
    cols = summary.group_columns
    return summary.runs.assign(label=labels)[[*cols, "label"]].drop_duplicates(cols)


def _with_group(
    table: pd.DataFrame, labels: pd.Series, summary: Summary | None = None
) -> pd.DataFrame:
    """``table`` with its group's label as a first column ``group``: by run (``runs``, index
    run) or, given ``summary``, by the group columns (``groups``)."""
    if summary is None:
        group = labels.reindex(table.index)
    else:
        cols = summary.group_columns
        group = table[cols].merge(_group_labels(summary, labels), on=cols, how="left")["label"]
        group.index = table.index
    return table.assign(group=group)[["group", *table.columns]]


def _summary_table(summary: Summary, labels: pd.Series) -> str:
    """Groups x headline final values, each as mean +- 95% half-width (n runs)."""
    g = summary.groups.merge(_group_labels(summary, labels), on=summary.group_columns)
    present = [m for m in _HEADLINE if f"{m}_final" in set(g["quantity"])]
    rows = []
    for label, block in g.groupby("label", sort=True):
        stats = block.set_index("quantity")
        cells = [label]
        cells.append(int(stats["n"].max()))
        for m in present:
            q = f"{m}_final"
            if q not in stats.index:
                cells.append("-")
                continue
            mean, ci = stats.loc[q, "mean"], stats.loc[q, "ci95"]
            cells.append(f"{mean:.4g}" + ("" if pd.isna(ci) else f" ± {ci:.2g}"))
        rows.append(cells)
    return _table(["group", "runs", *(f"{m} (final)" for m in present)], rows)


def _setting_grid(frame: pd.DataFrame, metric: str) -> str | None:
    """``by_setting`` as a markdown grid (rows: methods, columns: settings), mean +- std (n);
    None with a single setting (the summary table says it all then)."""
    long = by_setting(frame, metric)
    if long["setting"].nunique() < 2:
        return None

    def cell(r: pd.Series) -> str:
        std = "" if pd.isna(r["std"]) else f" ± {r['std']:.3f}"
        return f"{r['mean']:.3f}{std} ({int(r['n'])})"

    grid = long.assign(cell=long.apply(cell, axis=1)).pivot(
        index="row", columns="setting", values="cell"
    )
    rows = [
        [row, *(grid.loc[row, c] if pd.notna(grid.loc[row, c]) else "-" for c in grid)]
        for row in grid.index
    ]
    return _table(["method", *grid.columns], rows)


def _runs_table(summary: Summary) -> str:
    runs = summary.runs
    present = [f"{m}_final" for m in _HEADLINE if f"{m}_final" in runs]
    cols = [c for c in (SEED, *present) if c in runs]
    rows = [[run, *(row[c] for c in cols)] for run, row in runs.iterrows()]
    return _table(["run", *cols], rows)


_WALL_TEXT = (
    "Mean seconds of a round (round 1, the warm-up, left out) and of its phases; *floor*: the "
    "model's own compute (the slowest host's sum of its nodes' local steps); *overhead*: "
    "(round - eval) / floor, 1.00 being bare compute. With async or bounded schedules the "
    "phases are the hosts' busy seconds. Also in [wall.csv](wall.csv)."
)


def _wall_rows(wall: pd.DataFrame) -> str:
    cols = ["round_s", "train_s", "exchange_s", "combine_s", "metrics_s", "eval_s", "driver_s"]
    rows = [
        [
            run,
            *(f"{row[c]:.3g}" for c in cols),
            f"{row['floor_s']:.3g}",
            f"{row['overhead_ratio']:.3f}",
        ]
        for run, row in wall.iterrows()
    ]
    head = ["run", "round", "train", "exchange", "combine", "metrics", "eval", "driver"]
    return _table([*head, "floor", "overhead"], rows)


def write_report(paths: Sequence[str | Path], out_dir: str | Path | None = None) -> Path:
    """Read every run under ``paths`` (run or sweep folders) and write the report folder
    (default: ``<first path>/report``); return the path of its ``report.md``."""
    roots = check_roots(paths)
    frame = read_runs(*roots)
    out = Path(out_dir) if out_dir is not None else roots[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(frame)
    labels = run_labels(frame)
    _with_group(summary.runs, labels).to_csv(out / "summary.csv")
    _with_group(summary.groups, labels, summary).to_csv(out / "by_method.csv", index=False)

    figures = []  # (file name, caption)
    drawn = {name: fn(frame) for name, fn in FIGURES.items()}
    captions = dict(_CAPTIONS)
    partitions = partition_runs(frame)
    for k, run in enumerate(partitions[:MAX_HISTOGRAMS]):
        drawn[f"label_histogram_{k + 1}"] = plot_label_histogram(frame, run)
        captions[f"label_histogram_{k + 1}"] = f"Training samples per class and node in {run}."
    for name, fig in drawn.items():
        if fig is None:
            continue
        fig.savefig(out / f"{name}.png", dpi=DPI)
        figures.append((f"{name}.png", captions[name]))

    title = ", ".join(r.name for r in roots)
    parts = [
        f"# Report: {title}",
        "## What was run",
        _what_was_run(frame, roots, labels),
        "## Summary over seeds",
        "Final whole-network values: the mean over a group's runs ± the half-width of its 95% "
        "t-interval (none with one run). Full statistics, best values included: "
        "[by_method.csv](by_method.csv); each run: [summary.csv](summary.csv).",
        _summary_table(summary, labels),
    ]
    for metric, what in (
        ("mean_node_acc", "mean node accuracy"),
        ("eval_acc", "accuracy of the network-average model"),
    ):
        grid = _setting_grid(frame, metric)
        if grid is not None:
            by_setting(frame, metric).to_csv(out / f"by_setting_{metric}.csv", index=False)
            parts += [
                f"### Final {what} by setting",
                "Mean ± std over seeds (runs). A row is "
                "a method and its options, a column what else differs between runs.",
                grid,
            ]
    parts += ["## Runs", _runs_table(summary)]
    wall = wall_table(*roots)
    if len(wall):
        wall.to_csv(out / "wall.csv")
        parts += ["### Wall time per round", _WALL_TEXT, _wall_rows(wall)]
    parts.append("## Figures")
    if len(partitions) > MAX_HISTOGRAMS:
        shown = f"{MAX_HISTOGRAMS} of {len(partitions)}"
        parts.append(f"Label histograms: the first {shown} distinct partitions.")
    for k, (file, caption) in enumerate(figures, start=1):
        parts.append(f"![{file.removesuffix('.png')}]({file})\n\n*Figure {k}.* {caption}")
    path = out / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path
