"""The scaling bench's pure parts: the round split, the growth exponent, the guard, the
multi-node comparison and the command line (the heavy runs are scripts, not tests)."""

from __future__ import annotations

import math
import sys

import pandas as pd
import pytest

from analysis.wall import round_split
from decaf_ray.bench.guard import run_guarded
from decaf_ray.bench.multinode import compare
from decaf_ray.bench.options import ScaleOptions
from decaf_ray.bench.scale import format_scale, growth_exponent, scale_config
from decaf_ray.cli import _parser


def _frame() -> pd.DataFrame:
    """Three rounds of a 4-node run on hosts [0, 1] and [2, 3]; round 1 is warm-up."""
    rows = []
    for t in (1, 2, 3):
        phases = {"train_s": 2.0 * t, "exchange_s": 0.1, "combine_s": 0.5, "metrics_s": 0.2}
        if t == 3:
            phases["eval_s"] = 1.0  # the one evaluation, after the last round
        phases["round_wall_s"] = sum(phases.values()) + 0.3  # 0.3 s of driver bookkeeping
        rows += [(t, -1, m, v) for m, v in phases.items()]
        rows += [(t, i, "node_train_s", (i + 1) * 0.1 * t) for i in range(4)]
    return pd.DataFrame(rows, columns=["round", "node", "metric", "value"])


def test_round_split_adds_up_and_the_floor_is_the_slowest_host():
    split = round_split(_frame(), [[0, 1], [2, 3]])
    assert split["rounds_measured"] == 2  # rounds 2 and 3
    assert split["train_s"] == pytest.approx(5.0) and split["eval_s"] == pytest.approx(0.5)
    assert split["driver_s"] == pytest.approx(0.3)
    parts = sum(split[k] for k in ("train_s", "exchange_s", "combine_s", "metrics_s", "eval_s"))
    assert split["round_s"] == pytest.approx(parts + 0.3)
    # host 1 (nodes 2, 3) is slower: (0.3 + 0.4) t, at t = 2 and 3
    assert split["floor_s"] == pytest.approx(0.7 * 2.5)
    assert split["node_step_s"] == pytest.approx(0.25 * 2.5)  # nodes 0.1 .. 0.4 s, times t
    no_eval = split["round_s"] - split["eval_s"]
    assert split["round_in_steps"] == pytest.approx(no_eval / 0.625)


def test_growth_exponent_uses_the_two_largest_sizes_that_ran():
    table = pd.DataFrame(
        {
            "n": [256, 1024, 4096, 16384],
            "status": ["ok", "ok", "ok", "skipped"],
            "round_s": [1.0, 2.0, 8.0, float("nan")],
        }
    )
    assert growth_exponent(table) == pytest.approx(1.0)  # 4x the nodes, 4x the time
    table["round_in_steps"] = [10.0, 20.0, 80.0 * 2, float("nan")]  # 8x for 4x: slope 1.5
    assert growth_exponent(table, "round_in_steps") == pytest.approx(1.5)
    assert math.isnan(growth_exponent(table.iloc[[0, 3]]))  # one size ran: no slope
    table["status"] = "ok"
    table["round_s"] = [1.0, 2.0, 8.0, 64.0]  # 1,024 -> 16,384: 16x the nodes, 32x the time
    assert growth_exponent(table, start=1024) == pytest.approx(1.25)
    assert math.isnan(growth_exponent(table.iloc[[0, 2, 3]], start=1024))  # 1,024 did not run
    text = format_scale(table.assign(overhead_ms_per_node=1.0))
    assert "round_s between n=4096 and n=16384: 1.500" in text  # the two largest
    assert "round_s between n=1024 and n=16384: 1.250 (misses" in text  # the span


def test_scale_config_allows_more_nodes_than_articles():
    cfg = scale_config(16384, ScaleOptions(rounds=3))
    assert cfg.topology.n == 16384 > 2225 and cfg.data.samples_per_node == 4
    assert cfg.model.name == "tiny-bert" and cfg.eval.every == cfg.train.rounds == 3


def test_guard_kills_a_child_past_its_memory_and_says_where(tmp_path):
    grow = (
        "import time\nprint('stage: filling', flush=True)\nblocks = []\n"
        "for _ in range(200):\n    blocks.append(bytearray(20 * 2**20)); time.sleep(0.01)\n"
        "time.sleep(30)\n"
    )
    got = run_guarded([sys.executable, "-c", grow], tmp_path / "a.log", 150 * 2**20, 60)
    assert got.status == "memory" and got.stage == "filling"
    assert got.peak_tree_bytes > 150 * 2**20 and got.wall_s < 30
    assert got.reason.startswith("memory guard:") and "'filling'" in got.reason


def test_guard_times_out_and_reports_failures(tmp_path):
    slow = "import time\nprint('stage: waiting', flush=True)\ntime.sleep(60)\n"
    got = run_guarded([sys.executable, "-c", slow], tmp_path / "b.log", 2**40, 2.0)
    assert got.status == "timeout" and "still in 'waiting'" in got.reason and got.wall_s < 30
    bad = "print('stage: parsing', flush=True)\nraise SystemExit('bad input here')\n"
    got = run_guarded([sys.executable, "-c", bad], tmp_path / "c.log", 2**40, 60)
    assert got.status == "failed" and got.returncode == 1
    assert "in 'parsing'" in got.reason and "bad input here" in got.reason
    assert "bad input here" in (tmp_path / "c.log").read_text()


def test_multinode_comparison_leaves_wall_clock_out_and_catches_a_difference():
    rows = [(1, -1, "product_consensus", 0.25), (1, 0, "train_loss", 1.5), (1, -1, "train_s", 3.0)]
    a = pd.DataFrame(rows, columns=["round", "node", "metric", "value"])
    slower = a.assign(value=[0.25, 1.5, 9.0])  # a wall-clock row may differ...
    assert compare(slower, a) == ""
    assert compare(a.assign(value=[0.25, 1.5 + 1e-12, 3.0]), a) == ""  # ...rounding too
    moved = a.assign(value=[0.25 * (1 + 1e-4), 1.5, 3.0])  # ...a value may not
    assert "1 values differ" in compare(moved, a) and "product_consensus" in compare(moved, a)
    assert "in one run only" in compare(a, a.iloc[1:])


def test_cli_parses_scale_options():
    args = _parser().parse_args(["bench", "--scale", "--scale-nodes", "256", "4096"])
    assert args.scale and args.scale_nodes == [256, 4096] and args.scale_rounds == 3
    assert not _parser().parse_args(["bench"]).scale
