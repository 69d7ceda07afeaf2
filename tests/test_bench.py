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
from tests.conftest import host_of, tiny_config


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
    who = {"sim", *s["floors"], s["maths_floor_layout"]}
    assert set(times.who) == who and len(times) == 3 * len(who)
    assert s["maths_floor_s"] > 0 and "maths" in s["maths_floor_layout"]
    assert s["measured_rounds"] == 4 and s["sim_s"] > 0 and s["floor_s"] > 0
    assert s["sim_s"] == sim[sim.turn > 1].wall_s.median()
    timed = times[times.turn > 1].set_index(["turn", "who"]).wall_s
    for floor in (s["floor_layout"], s["maths_floor_layout"]):
        ratios = [timed[(k, "sim")] / timed[(k, floor)] for k in (2, 3)]
        med, lo, hi = s["paired"][floor]
        assert (lo, hi) == (min(ratios), max(ratios)) and med == pytest.approx(sum(ratios) / 2)


def test_block_inboxes_stand_in_distinct_nodes_of_the_block_for_outside_neighbours():
    from decaf_ray.bench.floor import block_inboxes
    from decaf_ray.prepare import make_graph

    _, Pi, _ = make_graph(tiny_config(topology__n=8))
    blocks = [[0, 1, 2, 3], [4, 5, 6, 7]]
    inboxes = block_inboxes(Pi, blocks)
    assert sorted(inboxes) == list(range(8))
    for block in blocks:
        for i in block:
            ids = [j for _, j in inboxes[i]]
            assert set(ids) <= set(block) and len(set(ids)) == len(ids) == 3  # self + 2 on a ring
            assert sum(w for w, _ in inboxes[i]) == pytest.approx(1.0)
            assert i in ids
    assert dict((j, w) for w, j in inboxes[1]) == {0: 1 / 3, 1: 1 / 3, 2: 1 / 3}  # all inside


def test_maths_floor_round_combines_the_nodes_as_the_algorithm_does():
    """The floor with maths runs the algorithm's own combine: afterwards each node holds what
    decaf's combine_all makes of its (stood-in) inbox."""
    import numpy as np

    from decaf_ray.algorithms import REGISTRY
    from decaf_ray.bench.floor import _maths, block_inboxes

    host, prep = host_of(tiny_config())
    host.train(1)
    inboxes = block_inboxes(prep.Pi, [[0, 1, 2, 3]])
    before = {i: host.adapter(i) for i in inboxes}
    want = REGISTRY["decaf"]().combine_all(
        [before[i] for i in inboxes],
        [[(w, before[j]) for w, j in inbox] for inbox in inboxes.values()],
    )
    _maths(host, inboxes, 1)
    for i, (adapter, _) in zip(inboxes, want):
        for m in adapter.modules:
            np.testing.assert_allclose(host.adapter(i).B[m], adapter.B[m], rtol=1e-5, atol=1e-7)
            assert not np.allclose(host.adapter(i).B[m], before[i].B[m])  # it did combine


def test_overhead_rows_name_the_paired_per_turn_ratios():
    from decaf_ray.bench.overhead import _engine_row, _overhead_row

    s = {
        "sim_s": 2.2,
        "floor_s": 2.0,
        "floors": {"a": 2.0, "b": 2.5},
        "floor_layout": "a",
        "maths_floor_s": 2.1,
        "maths_floor_layout": "a + maths",
        "measured_rounds": 4,
        "paired": {"a": (1.1, 1.05, 1.2), "a + maths": (1.04, 1.0, 1.1)},
    }
    row = _overhead_row(s, "n=4", 1.05)
    assert row.value == pytest.approx(1.1) and row.meets == "no"
    assert "per turn 1.100 (median; 1.050 to 1.200)" in row.detail
    engine = _engine_row(s, "n=4")
    assert engine.value == pytest.approx(2.2 / 2.1) and "per turn 1.040" in engine.detail
