"""The typed config: YAML + --set overrides, one error listing every problem, round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from decaf_ray.config import (
    ConfigError,
    RunConfig,
    expand_sweep,
    load_config,
    parse_override,
    save_config,
)


def test_defaults_and_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntrain: {rounds: 3}\nmodel: {target_modules: [query]}\n")
    cfg = load_config(path, ["train.lr=1e-4", "topology.n=12", "algorithm.name=dlora"])
    assert cfg.train.rounds == 3 and cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.topology.n == 12 and cfg.algorithm.name == "dlora"
    assert cfg.model.target_modules == ("query",)
    with pytest.raises(AttributeError):
        cfg.train.rounds = 4  # frozen


def test_every_problem_is_reported_together():
    with pytest.raises(ConfigError) as err:
        load_config(
            None,
            [
                "algorithm.name=sgd",
                "topology.name=moebius",
                "train.rounds=0",
                "data.test_fraction=1.5",
                "model.r=0",
            ],
        )
    msg = str(err.value)
    for bad in ("'sgd'", "'moebius'", "train.rounds=0", "data.test_fraction=1.5", "model.r=0"):
        assert bad in msg


def test_unknown_key_and_wrong_type_are_named():
    with pytest.raises(ConfigError, match="unknown key 'train.lrr'"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="train.rounds='ten' should be of type int"):
        load_config(None, ["train.rounds=ten"])


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=1", "train.lr=[1,"])
def test_malformed_set_is_rejected_with_the_text(text):
    with pytest.raises(ConfigError, match="malformed --set"):
        parse_override(text)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["topology.params={p: 0.3}", "seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and isinstance(again, RunConfig)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 7


def test_sweep_expands_to_named_runs():
    cfg = load_config(None, ["name=s", "sweep={algorithm.name: [dlora, decaf], seed: [0, 1]}"])
    runs = expand_sweep(cfg)
    assert [r.name for r in runs] == ["s-dlora-0", "s-dlora-1", "s-decaf-0", "s-decaf-1"]
    assert {(r.algorithm.name, r.seed) for r in runs} == {
        ("dlora", 0),
        ("dlora", 1),
        ("decaf", 0),
        ("decaf", 1),
    }
    assert all(not r.sweep for r in runs)


def test_a_sweep_value_that_is_a_mapping_sets_its_keys_together():
    cfg = load_config(
        None,
        ["name=s", "sweep={model: [{r: 2, alpha: 4}, {r: 8, alpha: 16}], seed: [0, 1]}"],
    )
    runs = expand_sweep(cfg)
    names = ["s-r=2,alpha=4-0", "s-r=2,alpha=4-1", "s-r=8,alpha=16-0", "s-r=8,alpha=16-1"]
    assert [r.name for r in runs] == names
    assert [(r.model.r, r.model.alpha, r.seed) for r in runs] == [
        (2, 4, 0),
        (2, 4, 1),
        (8, 16, 0),
        (8, 16, 1),
    ]
    assert all(r.model.name == cfg.model.name for r in runs)  # the rest of the section kept
    from decaf_ray.runner import over_seeds, swept_columns

    assert swept_columns(cfg.sweep) == ["model.r", "model.alpha"]  # one value a cell
    table = pd.DataFrame(
        [
            {
                "run": r.name,
                "algorithm": r.algorithm.name,
                "model.r": r.model.r,
                "model.alpha": r.model.alpha,
                "seed": r.seed,
                "mean_node_acc": 0.5 + r.seed,
            }
            for r in runs
        ]
    ).set_index("run")
    seeds = over_seeds(table)
    assert seeds["mean_node_acc_mean"].tolist() == [1.0, 1.0] and seeds["seeds"].tolist() == [2, 2]
    flags = load_config(None, ["name=d", "sweep={algorithm: [{align: true}]}"])
    assert [r.name for r in expand_sweep(flags)] == ["d-align=true"]
    with pytest.raises(ConfigError, match="sweep.model has an empty mapping"):
        expand_sweep(load_config(None, ["sweep={model: [{}]}"]))
    with pytest.raises(ConfigError, match="model.rank"):
        expand_sweep(load_config(None, ["sweep={model: [{rank: 2}]}"]))


def test_every_runs_preset_is_valid():
    from pathlib import Path

    presets = sorted(Path(__file__).parents[1].glob("runs/*.yaml"))
    assert len(presets) >= 5
    for path in presets:
        for cfg in expand_sweep(load_config(path)):
            assert cfg.train.rounds >= 1


def test_sweep_runs_share_one_prepared_partition_per_data_and_seed():
    from conftest import tiny_config
    from decaf_ray.runner import prepare_all

    a, b = tiny_config(algorithm__name="dlora"), tiny_config(algorithm__name="decaf")
    c = tiny_config(seed=11)
    pa, pb, pc = prepare_all([a, b, c])
    assert pa is pb and pa is not pc
    assert not all(np.array_equal(pa.shards[i].labels, pc.shards[i].labels) for i in range(4))


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (
            ['schedule.churn=[[1, "a", 3]]', "schedule.loss_p=2.0"],
            ["schedule.churn[0][1]='a' should be of type int", "schedule.loss_p=2.0"],
        ),
        (["schedule.churn=[[1, 2]]"], ["schedule.churn[0]=[1, 2] should have 3 items"]),
        (
            ['schedule.debug_sleep_s={0: "x"}', "train.rounds=0"],
            ["schedule.debug_sleep_s[0]='x' should be of type float", "train.rounds=0"],
        ),
        (
            ['schedule.factors=[1.0, "fast"]'],
            ["schedule.factors[1]='fast' should be of type float"],
        ),
        (["schedule.link_loss={0-1: high}"], ["schedule.link_loss['0-1']='high' should be"]),
        (["model.target_modules=[query, 3]"], ["model.target_modules[1]=3 should be of type str"]),
    ],
)
def test_item_and_value_types_are_checked_and_nothing_is_swallowed(overrides, needles):
    """A wrong type inside a list or mapping is reported, with every other problem."""
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for needle in needles:
        assert needle in str(err.value)


def test_mapping_keys_of_node_ids_may_be_written_as_strings():
    cfg = load_config(None, ['schedule.debug_sleep_s={"2": 0.5}'])
    assert cfg.schedule.debug_sleep_s == {2: 0.5}
