"""Group labels of mixed reports (analysis.labels): each group named by what sets it apart.

Pure functions of a per-run frame of config columns, as ``read_runs`` gives them; no runs.
"""

from __future__ import annotations

import pandas as pd

from analysis.labels import config_defaults, run_labels, yaml_value


def _runs(*configs: dict) -> pd.DataFrame:
    """One row per run (c0-s0, c0-s1, c1-s0, ...): each config given, with two seeds, over
    decaf-ray's defaults for the usual compared keys."""
    base = {
        "algorithm.name": "decaf",
        "algorithm.align": False,
        "algorithm.sv_split": "balanced",
        "topology.name": "ring",
        "topology.mixing": "uniform",
        "train.lr": 1e-3,
        "name": "x",
    }
    rows = []
    for k, cfg in enumerate(configs):
        for seed in (0, 1):
            rows.append({"run": f"c{k}-s{seed}", "seed": seed, **base, **cfg})
    return pd.DataFrame(rows)


def _labels(frame: pd.DataFrame, **kw) -> list[str]:
    """The label of each config (the runs of seed 0), in order."""
    labels = run_labels(frame, **kw)
    first, second = (labels[labels.index.str.endswith(s)] for s in ("-s0", "-s1"))
    assert first.tolist() == second.tolist()  # seeds of one group share its label
    return first.tolist()


def test_method_and_topology_are_named_by_their_values():
    frame = _runs(
        {},
        {"topology.name": "complete"},
        {"algorithm.name": "dlora"},
        {"algorithm.name": "dlora", "topology.name": "complete"},
    )
    assert _labels(frame) == ["decaf, ring", "decaf, complete", "dlora, ring", "dlora, complete"]


def test_options_at_their_default_are_left_out_and_the_others_named_in_yaml():
    frame = _runs(
        {},
        {"algorithm.align": True},
        {"algorithm.sv_split": "all_in_B"},
        {"algorithm.name": "dlora"},
    )
    assert _labels(frame) == ["decaf", "decaf (align=true)", "decaf (sv_split=all_in_B)", "dlora"]


def test_a_mixing_rule_that_follows_from_the_topology_is_not_named():
    frame = _runs({}, {"topology.name": "two_hubs", "topology.mixing": "dimat"})
    assert _labels(frame) == ["decaf, ring", "decaf, two_hubs"]
    # two rules on one graph: the rule is what differs
    frame = _runs({}, {"topology.mixing": "metropolis_hastings"})
    assert _labels(frame) == ["decaf", "decaf (mixing=metropolis_hastings)"]


def test_numbers_are_named_in_every_group_even_at_their_default():
    frame = _runs({}, {"train.lr": 1e-4}, {"train.lr": 1e-4, "topology.name": "complete"})
    assert config_defaults()["train.lr"] == 1e-3
    assert _labels(frame) == ["decaf, ring (lr=0.001)", "decaf, ring (lr=0.0001)"] + [
        "decaf, complete (lr=0.0001)"
    ]


def test_several_options_share_the_parentheses_and_a_short_name_clash_is_spelled_out():
    frame = _runs(
        {},
        {"algorithm.align": True, "schedule.mode": "async", "schedule.straggler_fraction": 0.1},
        {"model.alpha": 8.0, "exchange.alpha": 0.5},
    )
    frame["schedule.mode"] = frame["schedule.mode"].fillna("sync")
    frame["schedule.straggler_fraction"] = frame["schedule.straggler_fraction"].fillna(0.0)
    frame["model.alpha"] = frame["model.alpha"].fillna(16.0)
    frame["exchange.alpha"] = frame["exchange.alpha"].fillna(1.0)
    assert _labels(frame) == [
        "decaf, sync (straggler_fraction=0.0, model.alpha=16.0, exchange.alpha=1.0)",
        "decaf, async (align=true, straggler_fraction=0.1, model.alpha=16.0, exchange.alpha=1.0)",
        "decaf, sync (straggler_fraction=0.0, model.alpha=8.0, exchange.alpha=0.5)",
    ]


def test_the_topology_can_be_left_out_where_it_is_the_x_axis():
    frame = _runs({}, {"topology.name": "complete"}, {"algorithm.align": True})
    assert _labels(frame, leave_out="topology.") == ["decaf", "decaf", "decaf (align=true)"]


def test_a_mixing_rule_that_follows_the_topology_is_left_out_with_it():
    frame = _runs({}, {"topology.name": "two_hubs", "topology.mixing": "dimat"})
    assert _labels(frame, leave_out=("topology.name",)) == ["decaf", "decaf"]


def test_groups_that_the_short_labels_would_merge_are_named_in_full():
    # a hand-edited config: the string "true" beside the boolean, two groups for pandas,
    # both "align=true" in YAML spelling
    frame = _runs({"algorithm.align": True}, {"algorithm.align": "true"})
    labels = _labels(frame)
    assert labels == ["algorithm.name=decaf algorithm.align=True"] + [
        "algorithm.name=decaf algorithm.align=true"
    ]


def test_yaml_value_spells_values_as_a_config_file_does():
    assert [yaml_value(v) for v in (True, False, None, float("nan"), 0.1, "ring", 4)] == [
        "true",
        "false",
        "null",
        "null",
        "0.1",
        "ring",
        "4",
    ]
