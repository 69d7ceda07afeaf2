"""Figures of one or many runs, drawn from the long frame of ``read_runs``.

Every function takes that frame and returns a matplotlib ``Figure``, or None when the runs
did not log what it draws (the report leaves those out). Figures are made without pyplot, so
nothing opens a window and no global figure state is kept; save one with ``fig.savefig``.

One line per group of runs (``labels.run_labels``: the method, plus what else sets the group
apart, e.g. ``decaf, ring (align=true)``); where a group holds several seeds the line is their
mean and a band spans their minimum to maximum.

>>> from analysis import read_runs, plot_consensus
>>> plot_consensus(read_runs("runs/out/demo-20261125-170000")).savefig("consensus.png")
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.labels import run_labels
from analysis.series import SEED, network_series, over_seeds
from analysis.timing import time_to
from decaf_ray.engine.log import NETWORK

MB = 1e6  # bytes
_PANEL = (5.6, 4.0)  # inches per panel
# y labels in matplotlib's mathtext (no LaTeX needed)
_CONSENSUS = r"consensus error $\frac{1}{n}\sum_i \|B_iA_i - \overline{BA}\|_F^2$"
_INTERFERENCE = r"interference $\|P_i - \bar{B}_i\bar{A}_i\|_F$"
_TAIL = r"tail energy $\sum_{k>r} \sigma_k^2$"


def _colours(labels) -> dict[str, tuple]:
    names = sorted(set(labels))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(k % cmap.N) for k, name in enumerate(names)}


def _what(frame: pd.DataFrame) -> str:
    """What was run, for a subtitle: topologies, nodes, rounds, seeds."""
    per_run = frame.drop_duplicates("run")

    def values(col: str) -> str:
        return "/".join(str(v) for v in sorted(per_run[col].astype(str).unique()))

    parts = []
    if "topology.name" in per_run:
        parts.append(values("topology.name"))
    if "topology.n" in per_run:
        parts.append(f"{values('topology.n')} nodes")
    parts.append(f"{int(frame['round'].max())} rounds")
    if SEED in per_run:
        parts.append(f"{per_run[SEED].nunique()} seed(s)")
    return ", ".join(parts) + f" ({len(per_run)} runs)"


def _figure(frame: pd.DataFrame, title: str, panels: int) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(_PANEL[0] * panels, _PANEL[1]), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(1, panels)))
    fig.suptitle(f"{title}\n{_what(frame)}", fontsize=11)
    return fig, axes


def _draw(ax: Axes, stats: pd.DataFrame, x: str, colours: dict, style: str = "-") -> None:
    """One line per label (the mean over its runs) and, for several runs, a min-max band."""
    for label, g in stats.groupby("label", sort=True):
        c = colours[label]
        ax.plot(g[x], g["mean"], style, color=c, marker="o", markersize=3, label=label)
        if (g["n"] > 1).any():
            ax.fill_between(g[x], g["lo"], g["hi"], color=c, alpha=0.2, linewidth=0)


def _series_panel(
    ax: Axes, frame: pd.DataFrame, metric: str, x: str, colours: dict, labels: pd.Series
) -> bool:
    """Draw ``metric``'s network series against ``x``; False when no run logged it."""
    series = network_series(frame, metric)
    if series.empty:
        return False
    _draw(ax, over_seeds(series, labels, x), x, colours)
    ax.set_xlabel({"round": "round", "virtual_s": "virtual time (s)"}[x])
    if x == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return True


def _log_y(ax: Axes) -> None:
    """Log y; a line with no positive value (fedavg's consensus, dlora_fa's interference: 0)
    cannot show on it, so its legend entry says so."""
    ax.set_yscale("log")
    for line in ax.get_lines():
        if not (np.asarray(line.get_ydata(), dtype=float) > 0).any():
            line.set_label(f"{line.get_label()} (0: off the log scale)")
    ax.legend(fontsize=8)


def plot_consensus(frame: pd.DataFrame) -> Figure | None:
    """Product consensus error (1/n) sum_i ||B_i A_i - mean_j B_j A_j||_F^2 against the
    round and against virtual time, log y."""
    if network_series(frame, "product_consensus").empty:
        return None
    labels = run_labels(frame)
    colours = _colours(labels)
    fig, axes = _figure(frame, "Product consensus error", 2)
    for ax, x in zip(axes, ("round", "virtual_s")):
        _series_panel(ax, frame, "product_consensus", x, colours, labels)
        _log_y(ax)
        ax.set_ylabel(_CONSENSUS)
    axes[0].set_title("per round")
    axes[1].set_title("per virtual second")
    return fig


_ACCURACY = {  # metric: (panel title, y label)
    "mean_node_acc": ("mean accuracy of the nodes' models", "accuracy (fraction correct)"),
    "mean_node_f1": ("mean macro-F1 of the nodes' models", "macro-F1 (0-1)"),
    "eval_acc": ("accuracy of the network-average model", "accuracy (fraction correct)"),
}


def plot_accuracy(frame: pd.DataFrame) -> Figure | None:
    """Held-out accuracy per round: the mean over nodes, their mean macro-F1 (classification
    runs that log it) and the network-average model's accuracy (node -1)."""
    present = [m for m in _ACCURACY if not network_series(frame, m).empty]
    if not present:
        return None
    labels = run_labels(frame)
    colours = _colours(labels)
    fig, axes = _figure(frame, "Held-out accuracy", len(present))
    for ax, metric in zip(axes, present):
        _series_panel(ax, frame, metric, "round", colours, labels)
        ax.set_title(_ACCURACY[metric][0])
        ax.set_ylabel(_ACCURACY[metric][1])
    return fig


def plot_interference(frame: pd.DataFrame) -> Figure | None:
    """Interference ||P_i - B_bar_i A_bar_i||_F of factor averaging (mean over nodes; fedavg:
    its server's) per round, beside decaf's TSVD tail energy sum_{k>r} sigma_k^2, log y."""
    if network_series(frame, "interference").empty:
        return None
    has_tail = not network_series(frame, "tsvd_tail").empty
    labels = run_labels(frame)
    colours = _colours(labels)
    fig, axes = _figure(frame, "Interference of factor averaging vs TSVD tail", 1 + has_tail)
    panels = [("interference", "what factor averaging misses", _INTERFERENCE)]
    if has_tail:
        panels.append(("tsvd_tail", "what decaf's TSVD drops", _TAIL))
    for ax, (metric, title, ylabel) in zip(axes, panels):
        _series_panel(ax, frame, metric, "round", colours, labels)
        _log_y(ax)
        ax.set_title(f"{title}\n(mean over nodes, sum over modules)", fontsize=10)
        ax.set_ylabel(ylabel)
    return fig


def _per_run_value(frame: pd.DataFrame, metric: str, last: bool = True) -> pd.Series:
    """The last (or first) network value of ``metric`` in each run, indexed by run."""
    s = network_series(frame, metric).sort_values("round").groupby("run")["value"]
    return s.last() if last else s.first()


def plot_spectral_gap(frame: pd.DataFrame) -> Figure | None:
    """Final product consensus error of each run against the spectral gap 1 - |lambda_2| of
    its mixing matrix, log y; drawn when the runs span two gaps or more (topologies)."""
    gap = _per_run_value(frame, "spectral_gap", last=False)
    final = _per_run_value(frame, "product_consensus")
    points = pd.DataFrame({"gap": gap, "final": final}).dropna()
    if points["gap"].round(12).nunique() < 2:
        return None
    labels = run_labels(frame, leave_out="topology.")
    per_run = frame.drop_duplicates("run").set_index("run")
    topology = per_run["topology.name"] if "topology.name" in per_run else labels.index
    points = points.assign(label=labels, topology=topology).reset_index()
    groups = points.groupby(["label", "gap"], as_index=False).agg(
        mean=("final", "mean"),
        lo=("final", "min"),
        hi=("final", "max"),
        topology=("topology", "first"),
    )  # one point per group and gap: the mean over its seeds
    colours = _colours(groups["label"])
    fig, (ax,) = _figure(frame, "Final consensus error vs spectral gap", 1)
    for label, g in groups.groupby("label", sort=True):
        ax.vlines(g["gap"], g["lo"], g["hi"], color=colours[label], linewidth=1)  # seeds
        ax.plot(g["gap"], g["mean"], "-o", color=colours[label], label=label, linewidth=1)
        for _, row in g.iterrows():
            ax.annotate(str(row["topology"]), (row["gap"], row["mean"]), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel(r"spectral gap $1 - |\lambda_2(\Pi)|$ (larger: faster gossip)")
    ax.set_ylabel(f"final {_CONSENSUS}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


RANK = "model.r"
# a rank ablation usually keeps alpha / r fixed, so alpha changes with r: neither names a group
_RANK_KEYS = (RANK, "model.alpha")
_BY_RANK = (  # metric, value per run (final or mean over rounds), y label, log y
    ("product_consensus", "final", f"final {_CONSENSUS}", True),
    ("interference", "mean over rounds", _INTERFERENCE, True),
    ("tsvd_tail", "mean over rounds", _TAIL, True),
    ("mean_node_acc", "final", "final mean node accuracy", False),
)


def plot_vs_rank(frame: pd.DataFrame) -> Figure | None:
    """A rank ablation: final product consensus error, interference and decaf's TSVD tail
    energy (each a mean over the run's rounds) and final mean node accuracy against the LoRA
    rank r; one line per group (the seeds' mean; a bar spans their min to max). Drawn for the
    groups whose runs span two ranks or more; None when no group does."""
    if RANK not in frame:
        return None
    labels = run_labels(frame, leave_out=_RANK_KEYS)
    rank = frame.drop_duplicates("run").set_index("run")[RANK].astype(int)
    spans = rank.groupby(labels).nunique()
    swept = labels[labels.map(spans) >= 2]
    if swept.empty:
        return None
    sub = frame[frame["run"].isin(swept.index)]
    panels = []
    for metric, how, ylabel, log in _BY_RANK:
        series = network_series(sub, metric)
        if series.empty:
            continue
        values = series.sort_values("round").groupby("run")["value"]
        per_run = values.last() if how == "final" else values.mean()
        panels.append((metric, per_run, how, ylabel, log))
    colours = _colours(swept)
    fig, axes = _figure(sub, "Rank ablation", len(panels))
    ranks = sorted(rank[swept.index].unique())
    for ax, (metric, per_run, how, ylabel, log) in zip(axes, panels):
        points = pd.DataFrame({"value": per_run, "r": rank, "label": swept}).dropna()
        stats = points.groupby(["label", "r"])["value"].agg(["mean", "min", "max"]).reset_index()
        for label, g in stats.groupby("label", sort=True):
            c = colours[label]
            ax.vlines(g["r"], g["min"], g["max"], color=c, linewidth=1)  # seeds
            ax.plot(g["r"], g["mean"], "-o", color=c, markersize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("LoRA rank r")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{metric} ({how})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if log:
            _log_y(ax)
    return fig


def _label_counts(frame: pd.DataFrame, run: str) -> pd.DataFrame:
    """Round-0 label histogram of ``run``: nodes x classes (columns: class names)."""
    rows = frame[
        (frame["run"] == run)
        & (frame["round"] == 0)
        & (frame["node"] != NETWORK)
        & frame["metric"].str.startswith("label_count:")
    ]
    table = rows.pivot_table(index="node", columns="metric", values="value", aggfunc="first")
    return table.rename(columns=lambda m: m.split(":", 1)[1])


def partition_runs(frame: pd.DataFrame) -> list[str]:
    """The first run of each distinct partition (label histogram); runs without one are
    left out. Runs of one seed and one data config share a partition."""
    seen, out = [], []
    for run in frame["run"].drop_duplicates():
        table = _label_counts(frame, run)
        if table.empty or any(table.equals(t) for t in seen):
            continue
        seen.append(table)
        out.append(run)
    return out


def plot_label_histogram(frame: pd.DataFrame, run: str | None = None) -> Figure | None:
    """Heatmap of the training samples of each class at each node (``label_count:<class>`` at
    round 0) of ``run``, by default the first run that logged one."""
    runs = partition_runs(frame) if run is None else [run]
    table = _label_counts(frame, runs[0]) if runs else pd.DataFrame()
    if table.empty:
        return None
    counts = table.to_numpy()  # (nodes, classes)
    width = max(4.0, 0.6 * counts.shape[1] + 2.5)
    height = max(3.0, 0.3 * counts.shape[0] + 1.5)
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="training samples")
    ax.set_xticks(range(counts.shape[1]), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(counts.shape[0]), table.index)
    ax.set_xlabel("class")
    ax.set_ylabel("node")
    if counts.size <= 400:
        cut = counts.max() / 2
        for (i, j), v in np.ndenumerate(counts):
            colour = "black" if v > cut else "white"
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color=colour)
    row = frame[frame["run"] == runs[0]].iloc[0]
    how = " ".join(f"{k}={row[f'data.{k}']}" for k in ("partition", "alpha") if f"data.{k}" in row)
    ax.set_title(f"Label histogram per node: {runs[0]}\n{how}", fontsize=10)
    return fig


def plot_accuracy_vs_bytes(frame: pd.DataFrame) -> Figure | None:
    """Mean node accuracy against the bytes all nodes have sent so far (MB): sum of
    ``bytes_sent`` over nodes, cumulated over rounds."""
    acc = network_series(frame, "mean_node_acc")
    sent = frame[(frame["metric"] == "bytes_sent") & (frame["node"] != NETWORK)]
    if acc.empty or sent.empty:
        return None
    per_round = sent.groupby(["run", "round"])["value"].sum().reset_index()
    per_round["sent_MB"] = per_round.groupby("run")["value"].cumsum() / MB
    series = acc.merge(per_round[["run", "round", "sent_MB"]], on=["run", "round"])
    labels = run_labels(frame)
    fig, (ax,) = _figure(frame, "Accuracy vs data sent", 1)
    _draw(ax, over_seeds(series, labels, "sent_MB"), "sent_MB", _colours(labels))
    ax.set_xlabel("cumulative data sent by all nodes (MB)")
    ax.set_ylabel("mean node accuracy (fraction correct)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def default_target(frame: pd.DataFrame, metric: str, below: bool = True) -> float:
    """A level every run reaches: the largest final value (``below``) or the smallest best."""
    s = network_series(frame, metric).sort_values("round").groupby("run")["value"]
    return float(s.last().max() if below else s.max().min())


def plot_time_to_target(
    frame: pd.DataFrame,
    metric: str = "product_consensus",
    target: float | None = None,
    below: bool = True,
) -> Figure | None:
    """Bars of the virtual time each group of runs takes to get ``metric`` to ``target``
    (``analysis.time_to``; mean over seeds, whiskers min-max). Drawn when the runs differ in
    ``schedule.mode`` (the straggler study); default target: ``default_target``."""
    mode = "schedule.mode"
    if mode not in frame or frame[mode].nunique() < 2:
        return None
    if network_series(frame, metric).empty:
        return None
    target = default_target(frame, metric, below) if target is None else target
    labels = run_labels(frame)
    per_run = frame.drop_duplicates("run").set_index("run")
    times = frame.groupby("run").apply(time_to, metric=metric, target=target, below=below)
    bars = (
        pd.DataFrame({"t": times, "label": labels, "mode": per_run[mode]})
        .groupby("label")
        .agg(mean=("t", "mean"), lo=("t", "min"), hi=("t", "max"), mode=("mode", "first"))
    )
    colours = _colours(bars["mode"])
    sign = "<=" if below else ">="
    fig, (ax,) = _figure(frame, f"Virtual time to {metric} {sign} {target:.3g}", 1)
    fig.set_size_inches(max(_PANEL[0], 0.45 * len(bars) + 2), _PANEL[1] + 1.5)
    x = np.arange(len(bars))
    err = np.vstack([bars["mean"] - bars["lo"], bars["hi"] - bars["mean"]])
    ax.bar(x, bars["mean"], color=[colours[m] for m in bars["mode"]], yerr=err, capsize=2)
    for k, t in enumerate(bars["mean"]):
        if not np.isfinite(t):
            ax.text(k, 0, "not reached", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, bars.index, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("virtual time to target (s)")
    ax.set_xlabel("run group")
    handles = [Patch(color=c, label=m) for m, c in colours.items()]
    ax.legend(handles=handles, title="schedule.mode", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


FIGURES = {  # file name: figure function of the frame; the report draws them in this order
    "consensus": plot_consensus,
    "accuracy": plot_accuracy,
    "interference": plot_interference,
    "spectral_gap": plot_spectral_gap,
    "rank": plot_vs_rank,
    "accuracy_vs_bytes": plot_accuracy_vs_bytes,
    "time_to_target": plot_time_to_target,
}
