"""decaf-ray report and the analysis behind it, over one real sweep: dlora and decaf, 2 seeds.

The sweep (4 tiny runs on the session's Ray cluster) is made once for the module; figures and
statistics are checked against values computed here from the same long frame.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image
from scipy import stats

from analysis import (
    host_blocks,
    plot_accuracy,
    plot_accuracy_vs_bytes,
    plot_consensus,
    plot_interference,
    plot_label_histogram,
    plot_spectral_gap,
    plot_time_to_target,
    plot_vs_rank,
    read_runs,
    summarise,
    time_to,
    wall_table,
    write_report,
)
from analysis.figures import partition_runs
from analysis.labels import run_labels
from analysis.report import _summary_table, _with_group
from analysis.series import compared_columns
from decaf_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["decaf", "dlora"]


@pytest.fixture(scope="module")
def sweep_dir(tiny_sweep) -> Path:
    return tiny_sweep


@pytest.fixture(scope="module")
def frame(sweep_dir) -> pd.DataFrame:
    return read_runs(sweep_dir)


def _net(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    return frame[(frame.metric == metric) & (frame.node == -1)]


def _legend(ax) -> list[str]:
    return sorted(t.get_text() for t in ax.get_legend().get_texts())


def _variant(frame: pd.DataFrame, suffix: str, **columns) -> pd.DataFrame:
    """A copy of the sweep's runs renamed ``<run><suffix>``, with config columns changed."""
    return frame.assign(run=frame["run"] + suffix, **columns)


# ------------------------------------------------------------------ groups and summary


def test_runs_that_differ_in_seed_only_form_one_group_per_method(frame):
    assert frame["run"].nunique() == 4
    assert compared_columns(frame) == ["algorithm.name"]
    labels = run_labels(frame)
    assert labels.to_dict() == {f"rep-{m}-{s}": m for m in METHODS for s in (1, 2)}
    mode = _variant(frame, "-async", **{"schedule.mode": "async"})
    both = run_labels(pd.concat([frame, mode]))
    assert both["rep-decaf-1-async"] == "decaf, async"
    assert both["rep-decaf-1"] == "decaf, sync"


def test_summarise_gives_final_and_best_values_and_their_statistics_over_seeds(frame):
    s = summarise(frame)
    assert sorted(s.runs.index) == sorted(frame["run"].unique())
    assert s.group_columns == ["algorithm.name"]
    for method in METHODS:
        acc = _net(frame[frame["algorithm.name"] == method], "mean_node_acc")
        final = acc.sort_values("round").groupby("run")["value"].last()
        cons = _net(frame[frame["algorithm.name"] == method], "product_consensus")
        best = cons.groupby("run")["value"].min()
        assert s.runs.loc[best.index, "product_consensus_best"].tolist() == best.tolist()
        row = s.groups.set_index(["algorithm.name", "quantity"]).loc[
            (method, "mean_node_acc_final")
        ]
        values = final.to_numpy()
        assert len(values) == row["n"] == 2
        assert row["mean"] == pytest.approx(values.mean())
        assert row["std"] == pytest.approx(values.std(ddof=1))
        half = stats.t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)  # t = 12.71
        assert row["ci95"] == pytest.approx(half, nan_ok=True)


def test_interference_of_per_node_methods_is_the_mean_over_nodes(frame):
    s = summarise(frame)
    rows = frame[(frame.metric == "interference") & (frame.run == "rep-dlora-2")]
    last = rows[rows["round"] == rows["round"].max()]["value"].mean()
    assert s.runs.loc["rep-dlora-2", "interference_final"] == pytest.approx(last)


# ------------------------------------------------------------------ figures


@pytest.mark.parametrize(
    "draw, lines, xlabels, ylog",
    [
        (plot_consensus, [2, 2], ["round", "virtual time (s)"], [True, True]),
        (plot_accuracy, [2, 2, 2], ["round"] * 3, [False] * 3),
        (plot_interference, [2, 1], ["round"] * 2, [True, True]),  # tsvd_tail: decaf only
        (plot_accuracy_vs_bytes, [2], ["cumulative data sent by all nodes (MB)"], [False]),
    ],
)
def test_each_figure_draws_one_line_per_method_with_a_band_over_seeds(
    frame, draw, lines, xlabels, ylog
):
    fig = draw(frame)
    assert isinstance(fig, Figure)
    assert "ring, 4 nodes, 2 rounds, 2 seed(s) (4 runs)" in fig.get_suptitle()
    assert [len(ax.get_lines()) for ax in fig.axes] == lines
    assert [ax.get_xlabel() for ax in fig.axes] == xlabels
    assert [ax.get_yscale() == "log" for ax in fig.axes] == ylog
    for ax in fig.axes:
        assert ax.get_ylabel() and ax.collections  # a min-max band: two seeds per method
        assert set(_legend(ax)) <= set(METHODS)
    assert _legend(fig.axes[0]) == METHODS
    assert "fraction correct" in plot_accuracy(frame).axes[0].get_ylabel()


def test_consensus_lines_are_the_mean_over_seeds(frame):
    ax = plot_consensus(frame).axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "dlora")
    rows = _net(frame[frame["algorithm.name"] == "dlora"], "product_consensus")
    expected = rows.groupby("round")["value"].mean()
    np.testing.assert_allclose(line.get_xdata(), expected.index)
    np.testing.assert_allclose(line.get_ydata(), expected.to_numpy())


def test_a_line_of_zeros_on_a_log_axis_says_so_in_the_legend(frame):
    zero = frame.copy()
    decaf = (zero.metric == "product_consensus") & (zero["algorithm.name"] == "decaf")
    zero.loc[decaf, "value"] = 0.0
    assert _legend(plot_consensus(zero).axes[0]) == ["decaf (0: off the log scale)", "dlora"]


def test_bytes_are_summed_over_nodes_and_cumulated_over_rounds(frame):
    ax = plot_accuracy_vs_bytes(frame).axes[0]
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "decaf")
    sent = frame[(frame.metric == "bytes_sent") & (frame["algorithm.name"] == "decaf")]
    total_MB = sent.groupby("run")["value"].sum().mean() / 1e6
    assert total_MB > 0
    assert line.get_xdata()[-1] == pytest.approx(total_MB)
    assert line.get_xdata()[0] == pytest.approx(total_MB / 2)  # 2 rounds of equal messages


def test_label_histogram_is_the_round_0_counts_of_one_partition(frame):
    assert partition_runs(frame) == ["rep-decaf-1", "rep-decaf-2"]  # one per seed
    fig = plot_label_histogram(frame)
    ax = fig.axes[0]
    rows = frame[(frame.run == "rep-decaf-1") & frame.metric.str.startswith("label_count:")]
    counts = rows.pivot_table(index="node", columns="metric", values="value")
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), counts.to_numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        c.split(":", 1)[1] for c in counts.columns
    ]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("class", "node")
    assert "training samples" in fig.axes[1].get_ylabel()  # the colour bar
    assert counts.to_numpy().sum() == pytest.approx(160 * 0.8, abs=40)  # the train split


def test_figures_without_their_data_return_none(frame):
    assert plot_spectral_gap(frame) is None  # one topology: one gap
    assert plot_time_to_target(frame) is None  # one schedule mode
    no_eval = frame[~frame.metric.str.startswith(("eval_", "mean_node_"))]
    assert plot_accuracy(no_eval) is None and plot_accuracy_vs_bytes(no_eval) is None
    assert plot_label_histogram(frame[~frame.metric.str.startswith("label_count:")]) is None


def test_spectral_gap_figure_puts_each_topology_at_its_gap(frame):
    complete = _variant(frame, "-complete", **{"topology.name": "complete"})
    gap = complete.metric == "spectral_gap"
    complete.loc[gap, "value"] = 1.0
    fig = plot_spectral_gap(pd.concat([frame, complete], ignore_index=True))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "spectral gap" in ax.get_xlabel()
    assert _legend(ax) == METHODS
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "decaf")
    ring_gap = _net(frame, "spectral_gap")["value"].iloc[0]
    np.testing.assert_allclose(line.get_xdata(), [ring_gap, 1.0])
    final = _net(frame[frame["algorithm.name"] == "decaf"], "product_consensus")
    mean_final = final.sort_values("round").groupby("run")["value"].last().mean()
    assert line.get_ydata()[0] == pytest.approx(mean_final)


def test_rank_figure_puts_each_group_at_its_ranks(frame):
    assert plot_vs_rank(frame) is None  # one rank
    r = int(frame["model.r"].iloc[0])
    wider = _variant(frame, "-wide", **{"model.r": 2 * r, "model.alpha": 4 * r})
    tail = (wider.metric == "tsvd_tail") & (wider.node >= 0)
    wider.loc[tail, "value"] = wider.loc[tail, "value"] * 1e-3
    other = _variant(frame, "-iid", **{"data.partition": "iid"})  # one rank: not drawn
    fig = plot_vs_rank(pd.concat([frame, wider, other], ignore_index=True))
    consensus, interference, tail_ax, accuracy = fig.axes
    assert _legend(consensus) == [f"{m}, dirichlet" for m in METHODS]  # r and alpha unnamed
    assert consensus.get_xscale() == "log" and accuracy.get_yscale() == "linear"
    line = next(ln for ln in tail_ax.get_lines() if ln.get_label().startswith("decaf"))
    np.testing.assert_allclose(line.get_xdata(), [r, 2 * r])
    decaf = frame[frame["algorithm.name"] == "decaf"]
    per_node = decaf[(decaf.metric == "tsvd_tail") & (decaf.node >= 0)]
    mean = per_node.groupby(["run", "round"]).value.mean().groupby("run").mean().mean()
    np.testing.assert_allclose(line.get_ydata(), [mean, mean * 1e-3], rtol=1e-9)
    final = _net(decaf, "mean_node_acc").sort_values("round").groupby("run").value.last()
    acc = next(ln for ln in accuracy.get_lines() if ln.get_label().startswith("decaf"))
    assert acc.get_ydata()[0] == pytest.approx(final.mean())


def test_by_setting_puts_methods_in_rows_and_settings_in_columns(frame, tmp_path):
    from analysis.report import _setting_grid
    from analysis.summary import by_setting

    complete = _variant(frame, "-complete", **{"topology.name": "complete"})
    acc = (complete.metric == "mean_node_acc") & (complete.node == -1)
    complete.loc[acc, "value"] = complete.loc[acc, "value"] / 2
    both = pd.concat([frame, complete], ignore_index=True)
    long = by_setting(both).set_index(["row", "setting"])
    assert sorted(long.index) == [(m, t) for m in METHODS for t in ("complete", "ring")]
    final = _net(frame[frame["algorithm.name"] == "decaf"], "mean_node_acc")
    per_seed = final.sort_values("round").groupby("run")["value"].last()
    assert long.loc[("decaf", "ring"), "mean"] == pytest.approx(per_seed.mean())
    assert long.loc[("decaf", "ring"), "std"] == pytest.approx(per_seed.std())
    assert long.loc[("decaf", "complete"), "mean"] == pytest.approx(per_seed.mean() / 2)
    assert long.loc[("decaf", "ring"), "n"] == 2
    grid = _setting_grid(both, "mean_node_acc")
    assert grid.splitlines()[0] == "| method | complete | ring |"
    assert f"| decaf | {per_seed.mean() / 2:.3f} ± " in grid
    assert _setting_grid(frame, "mean_node_acc") is None  # one setting: no grid


def test_time_to_target_bars_compare_schedule_modes(frame):
    fast = _variant(frame, "-async", **{"schedule.mode": "async"})
    fast["virtual_s"] = fast["virtual_s"] / 2
    both = pd.concat([frame, fast], ignore_index=True)
    target = _net(frame, "product_consensus")["value"].max()
    fig = plot_time_to_target(both, target=target)
    ax = fig.axes[0]
    assert len(ax.patches) == 4  # decaf/dlora x sync/async
    assert ax.get_ylabel() == "virtual time to target (s)"
    assert f"<= {target:.3g}" in fig.get_suptitle()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    heights = dict(zip(ticks, (p.get_height() for p in ax.patches)))
    sync = [time_to(g, "product_consensus", target) for _, g in frame.groupby("run")]
    assert np.isfinite(sync).all()
    runs = frame[frame["algorithm.name"] == "dlora"].groupby("run")
    expected = np.mean([time_to(g, "product_consensus", target) for _, g in runs])
    assert heights["dlora, sync"] == pytest.approx(expected)
    assert heights["dlora, async"] == pytest.approx(expected / 2)


# ------------------------------------------------------------------ report and CLI


def test_report_command_writes_markdown_figures_and_tables(sweep_dir, tmp_path, capsys):
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "rep")]) == 0
    path = Path(capsys.readouterr().out.strip().removeprefix("report: "))
    assert path == tmp_path / "rep" / "report.md"
    text = path.read_text()
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == sorted(
        ["consensus.png", "accuracy.png", "interference.png", "accuracy_vs_bytes.png"]
        + ["label_histogram_1.png", "label_histogram_2.png"]
    )
    for name in pngs:
        assert f"]({name})" in text
        with Image.open(path.parent / name) as image:
            image.load()  # decodes the whole file
            assert image.format == "PNG" and image.width >= 400 and image.height >= 300
    assert "- **methods**: decaf, dlora" in text and "- **seeds**: 1, 2" in text
    assert "| decaf | 2 |" in text and "| dlora | 2 |" in text  # the summary table
    runs = pd.read_csv(path.parent / "summary.csv", index_col="run")
    assert len(runs) == 4 and {"mean_node_acc_final", "product_consensus_best"} <= set(runs)
    assert runs.columns[0] == "group" and (runs["group"] == runs["algorithm.name"]).all()
    by = pd.read_csv(path.parent / "by_method.csv")
    assert list(by.columns) == ["group", "algorithm.name", "quantity", "mean", "std", "n", "ci95"]
    assert set(by["n"]) == {2} and (by["group"] == by["algorithm.name"]).all()


def test_wall_table_splits_each_run_against_its_slowest_host(sweep_dir, frame, tmp_path):
    wall = wall_table(sweep_dir)
    assert sorted(wall.index) == sorted(frame["run"].unique())
    for run, row in wall.iterrows():
        last = frame[(frame.run == run) & (frame["round"] == 2)]  # round 1 is the warm-up
        assert row["rounds_measured"] == 1
        round_s = float(_net(last, "round_wall_s").value.iloc[0])
        eval_s = float(_net(last, "eval_s").value.iloc[0])
        assert row["round_s"] == pytest.approx(round_s) and row["eval_s"] == pytest.approx(eval_s)
        blocks = host_blocks(next(sweep_dir.rglob(f"{run}/placement.json")).parent)
        steps = last[last.metric == "node_train_s"]
        floor = max(steps[steps.node.isin(block)].value.sum() for block in blocks)
        assert row["floor_s"] == pytest.approx(floor)
        assert row["overhead_ratio"] == pytest.approx((round_s - eval_s) / floor)
        assert row["overhead_ratio"] > 1.0  # the engine costs something
        # the phases of a barrier round part its wall time: metrics never overlap evaluation
        assert row["driver_s"] >= 0.0
    write_report([sweep_dir], tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "### Wall time per round" in text and "| floor | overhead |" in text
    saved = pd.read_csv(tmp_path / "wall.csv", index_col="run")
    pd.testing.assert_frame_equal(saved, wall, check_dtype=False)


def test_a_mixed_report_labels_each_group_by_what_differs(frame):
    """The sweep's runs twice: as run (ring) and as if on the complete graph, decaf aligned."""
    other = _variant(frame, "-complete", **{"topology.name": "complete"})
    other["algorithm.align"] = other["algorithm.name"] == "decaf"
    mixed = pd.concat([frame, other], ignore_index=True)
    labels = run_labels(mixed)
    groups = ["decaf, complete (align=true)", "decaf, ring", "dlora, complete", "dlora, ring"]
    assert _legend(plot_consensus(mixed).axes[0]) == groups
    summary = summarise(mixed)
    table = _summary_table(summary, labels)
    assert [row.split(" | ")[0].removeprefix("| ") for row in table.splitlines()[2:]] == groups
    assert all(row.split(" | ")[1] == "2" for row in table.splitlines()[2:])  # runs per group
    runs = _with_group(summary.runs, labels)
    assert runs.loc["rep-decaf-1-complete", "group"] == "decaf, complete (align=true)"
    by = _with_group(summary.groups, labels, summary)
    assert list(by.columns[:1]) == ["group"] and sorted(by["group"].unique()) == groups
    decaf = by[by["algorithm.name"] == "decaf"]
    assert set(zip(decaf["topology.name"], decaf["group"])) == {
        ("ring", "decaf, ring"),
        ("complete", "decaf, complete (align=true)"),
    }


def test_report_goes_to_the_first_folder_by_default(sweep_dir):
    path = write_report([sweep_dir])
    assert path == sweep_dir / "report" / "report.md" and path.exists()
    assert read_runs(sweep_dir)["run"].nunique() == 4  # the report folder is not a run


@pytest.mark.parametrize("make, needle", [(None, "does not exist"), ("dir", "holds no runs")])
def test_a_folder_without_runs_is_one_line_with_exit_2(tmp_path, capsys, make, needle):
    path = tmp_path / "nothing"
    if make:
        path.mkdir()
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decaf-ray: error: ") and needle in err and str(path) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_without_matplotlib_the_report_names_the_extra(sweep_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    for name in ("analysis.figures", "analysis.report"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert main(["report", str(sweep_dir)]) == 2
    err = capsys.readouterr().err
    assert "install the plot extra: pip install 'decaf-ray[plot]'" in err
    assert summarise(read_runs(sweep_dir)).runs.shape[0] == 4  # the readers need no plots


def test_report_help_imports_neither_torch_nor_matplotlib():
    code = (
        "import sys\nfrom decaf_ray.cli import main\n"
        "try:\n    main(['report', '--help'])\nexcept SystemExit:\n    pass\n"
        "sys.exit(1 if {'torch', 'matplotlib'} & set(sys.modules) else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "run or sweep folder" in proc.stdout and "decaf-ray[plot]" in proc.stdout
