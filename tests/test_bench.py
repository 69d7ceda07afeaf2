"""The benchmark: TSVD timing rows, PSS reading, the command line, turns of rounds on Ray."""

from __future__ import annotations

import os

import pytest

from decaf_ray.bench.options import BenchOptions
from decaf_ray.bench.overhead import (
    bench_config,
    bench_tsvd,
    format_table,
    measure_round_overhead,
    pss_bytes,
)
from decaf_ray.cli import _parser
from tests.conftest import tiny_config


def test_tsvd_rows_time_both_paths_and_agree():
    rows = bench_tsvd(BenchOptions(tsvd_dim=256, tsvd_repeats=2, tsvd_dense_repeats=1))
    assert [r.figure for r in rows] == ["tsvd factored", "tsvd dense", "tsvd speed-up"]
    assert all(r.value > 0 for r in rows)
    assert rows[2].target == ">= 100" and rows[2].meets in ("yes", "no")
    gap = float(rows[2].detail.rsplit("=", 1)[1])
    assert gap < 1e-10  # factored and dense singular values agree
    assert "tsvd speed-up" in format_table(rows)


def test_pss_of_this_process_is_positive():
    assert pss_bytes([os.getpid()]) > 10 * 2**20


def test_bench_config_never_evaluates_and_uses_every_core_slot():
    cfg = bench_config(16, 32, 4, 1, BenchOptions(rounds=4, span=2))
    assert cfg.topology.n == 16 and cfg.data.max_length == 32 and cfg.train.batch_size == 4
    assert cfg.model.name == "minilm" and cfg.model.r == 8 and cfg.algorithm.name == "decaf"
    # a warm-up round and 3 turns of 2 rounds are timed; none evaluates
    assert cfg.train.rounds == cfg.eval.every == 8
    assert cfg.cluster.nodes_per_actor is None


def test_cli_parses_bench_options():
    args = _parser().parse_args(["bench", "--nodes", "16", "64", "256", "--small-nodes"])
    assert args.nodes == [16, 64, 256] and args.small_nodes == [] and args.max_length == 64
    assert args.span == 2 and _parser().parse_args(["bench", "--span", "1"]).span == 1
    for bad in (["--span", "0"], ["--rounds", "-1"], ["--span", "two"]):
        with pytest.raises(SystemExit) as stop:  # argparse: one line naming the value, exit 2
            _parser().parse_args(["bench", *bad])
        assert stop.value.code == 2


def test_llm_bench_config_is_smollm2_as_a_causal_lm_without_chat_template():
    cfg = bench_config(16, 48, 2, 1, BenchOptions(rounds=4), "smollm2-135m")
    assert cfg.model.name == "smollm2-135m" and cfg.task.name == "causal_lm"
    assert not cfg.task.chat_template and cfg.data.max_length == 48
    args = _parser().parse_args(["bench", "--llm-nodes"])
    assert args.llm_nodes == [] and BenchOptions().llm_nodes == (8, 16)


def test_combine_bench_times_both_paths_on_equal_results():
    from decaf_ray.bench.combine import compare, ring_inboxes

    owns, inboxes = ring_inboxes(5, 8, 2)
    assert [len(ib) for ib in inboxes] == [3] * 5 and inboxes[0][0][1] is owns[4]
    for algorithm in ("decaf", "dlora"):
        r = compare("tiny-bert", 16, repeats=1, algorithm=algorithm)
        assert r["one_at_a_time"] > 0 and r["batched"] > 0
        assert r["ratio"] == r["one_at_a_time"] / r["batched"]


def test_overhead_times_turns_of_rounds_in_a_row(pool, tmp_path):
    """A warm-up round, then turns of ``span`` rounds per contender, timed per round: the
    simulator's turn is one run over both rounds (its rounds overlap), the floors' too."""
    cfg = tiny_config(train__rounds=6, eval__every=6, eval__network_average=False)
    s, times = measure_round_overhead(cfg, 3, pool, tmp_path, span=2)
    sim = times[times.who == "sim"]
    assert list(sim["turn"]) == [1, 2, 3] and list(sim["round"]) == [1, 3, 5]
    assert set(times.who) == {"sim", *s["floors"]} and len(times) == 3 * len(set(times.who))
    assert s["measured_rounds"] == 4 and s["sim_s"] > 0 and s["floor_s"] > 0
    assert s["sim_s"] == sim[sim.turn > 1].wall_s.median()
