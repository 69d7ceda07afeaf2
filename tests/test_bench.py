"""The benchmark's pure parts: TSVD timing rows, PSS reading, the command line."""

from __future__ import annotations

import os

from decaf_ray.bench.options import BenchOptions
from decaf_ray.bench.overhead import bench_config, bench_tsvd, format_table, pss_bytes
from decaf_ray.cli import _parser


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
    cfg = bench_config(16, 32, 4, 1, BenchOptions(rounds=4))
    assert cfg.topology.n == 16 and cfg.data.max_length == 32 and cfg.train.batch_size == 4
    assert cfg.model.name == "minilm" and cfg.model.r == 8 and cfg.algorithm.name == "decaf"
    assert cfg.train.rounds == cfg.eval.every == 5  # rounds 1-4 are timed; none evaluates
    assert cfg.cluster.nodes_per_actor is None


def test_cli_parses_bench_options():
    args = _parser().parse_args(["bench", "--nodes", "16", "64", "256", "--small-nodes"])
    assert args.nodes == [16, 64, 256] and args.small_nodes == [] and args.max_length == 64


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
