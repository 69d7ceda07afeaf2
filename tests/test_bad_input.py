"""Bad input gets one clear error that names the bad value, before any training starts."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config
from decaf_ray.cli import main
from decaf_ray.config import ConfigError
from decaf_ray.data import DataError
from decaf_ray.prepare import prepare
from topologies import MixingError, validate_mixing


def test_rank_larger_than_module_allows():
    with pytest.raises(ValueError, match=r"model.r=64 is larger than module 'query' allows"):
        prepare(tiny_config(model__r=64))


def test_unknown_target_module():
    with pytest.raises(ValueError, match="no module named 'qkv'"):
        prepare(tiny_config(model__target_modules=["qkv"]))


def test_missing_data_file(tmp_path):
    missing = tmp_path / "absent.csv"
    with pytest.raises(ConfigError, match="data.path=.*absent.csv"):
        prepare(tiny_config(data__source="file", data__path=str(missing)))


def test_missing_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("body,label\nhello there,a\nbye now,b\n")
    with pytest.raises(DataError, match="'text'"):
        prepare(tiny_config(data__source="file", data__path=str(path)))


def test_fewer_samples_than_nodes(tmp_path):
    path = tmp_path / "d.csv"
    rows = "\n".join(f"text number {i},{'ab'[i % 2]}" for i in range(10))
    path.write_text("text,label\n" + rows + "\n")
    with pytest.raises(ValueError, match=r"only 8 training samples for 12 nodes"):
        prepare(
            tiny_config(
                data__source="file", data__path=str(path), topology__n=12, data__partition="iid"
            )
        )


def test_invalid_mixing_matrix_from_config():
    # uniform weights on a star are not symmetric: rejected before any host starts
    with pytest.raises(MixingError, match="not symmetric"):
        prepare(tiny_config(topology__name="star"))


def test_invalid_mixing_matrix_given_directly():
    Pi = np.array([[0.5, 0.5, 0.0], [0.5, 0.4, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(MixingError) as err:
        validate_mixing(Pi)
    assert "row 1" in str(err.value) and "disconnected" in str(err.value)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "algorithm.name=sgd"], "algorithm.name='sgd' is unknown"),
        (["--set", "topology.name=hypercube"], "topology.name='hypercube' is unknown"),
        (["--set", "train.lr"], "malformed --set 'train.lr'"),
        (
            ["--set", "schedule.graph=erdos_renyi", "--set", "topology.mixing=uniform"],
            "schedule.graph='erdos_renyi' with topology.mixing='uniform'",
        ),
        (["--set", 'schedule.churn=[[1, "a", 3]]'], "schedule.churn[0][1]='a'"),
        (["--set", "data.source=file", "--set", "data.path=/no/such.csv"], "/no/such.csv"),
        (["--set", "model.alpha=0"], "model.alpha=0.0 must be positive"),
        (["--set", "train.weight_decay=-1"], "train.weight_decay=-1.0 must be >= 0"),
        (["--set", "cluster.num_cpus=0"], "cluster.num_cpus=0 must be at least 1"),
        (["--set", "name=../escape"], "name='../escape' must be a plain folder name"),
        (["--set", 'schedule.link_loss={"0-99": 0.5}'], "'0-99' names a node outside 0..9"),
        (["--set", "schedule.debug_sleep_s={99: 1}"], "names node 99; nodes are 0..9"),
        (["--set", "cluster.gpus_per_host=64"], "cluster.gpus_per_host=64 is more than the"),
        (["--set", "output.save_nodes=[12]"], "output.save_nodes names node 12; nodes are 0..9"),
        (["--set", "checkpoint.every=-1"], "checkpoint.every=-1 must be >= 0"),
        (["--set", "checkpoint.keep=0"], "checkpoint.keep=0 must be at least 1"),
        (["--set", "cluster.restarts=-1"], "cluster.restarts=-1 must be >= 0"),
        (["--set", "cluster.call_timeout_s=0"], "cluster.call_timeout_s=0.0 must be positive"),
        (
            ["--set", "algorithm.name=ffa_lora", "--set", "model.same_init=false"],
            "equal on every node at the start: set model.same_init=true",
        ),
        (
            ["--set", "algorithm.name=flexlora", "--set", "schedule.mode=async"],
            "schedule.mode='async' needs a decentralized algorithm, not flexlora",
        ),
        (
            ["--set", "algorithm.name=flora", "--set", "schedule.mode=bounded"],
            "schedule.mode='bounded' needs a decentralized algorithm, not flora (it merges",
        ),
        (
            ["--set", "algorithm.name=flora", "--set", "model.use_dora=true"],
            "algorithm.name='flora' merges B A into the base weights, which DoRA's",
        ),
    ],
)
def test_cli_reports_one_clear_line(args, needle, capsys, tmp_path):
    code = main(["run", "runs/demo.yaml", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err


def test_every_missing_path_is_named_in_one_message(tmp_path):
    """A preset whose weights and data live elsewhere stops before Ray, naming both."""
    cfg = tiny_config(
        task__name="causal_lm",
        model__name="path",
        model__path=str(tmp_path / "Llama-2-7b-hf"),
        data__source="file",
        data__path=str(tmp_path / "boolq" / "train.jsonl"),
    )
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert "model.path=" in msg and "Llama-2-7b-hf" in msg
    assert "data.path=" in msg and "train.jsonl" in msg and "looked for" in msg


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: a\nname: b\n", "line 2, column 1: the key 'name' is given twice"),
        ("name: a\n\ttopology: {n: 3}\n", "line 2, column 1: found character"),
        ("name: !!python/object:os.system x\n", "line 1, column 7: could not determine"),
        ("topology: {n: 3\n", "line 2, column 1"),
    ],
)
def test_yaml_that_does_not_parse_names_file_line_and_column(tmp_path, capsys, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing left behind


@pytest.mark.parametrize(
    "labels, needle",
    [
        ([0.25, 1.5, 2.75, 0.5] * 10, "non-integer numbers (e.g. 0.25)"),
        (["spam"] * 40, "single class ('spam')"),
    ],
)
def test_labels_that_are_not_classes_are_refused(tmp_path, labels, needle):
    from decaf_ray.data import load_text_dataset

    path = tmp_path / "d.csv"
    pd.DataFrame({"text": [f"t {i}" for i in range(40)], "label": labels}).to_csv(path)
    with pytest.raises(ValueError, match=re.escape(needle)):
        load_text_dataset("file", str(path))


def test_dropped_rows_are_counted(tmp_path, capsys):
    from decaf_ray.data import load_text_dataset

    path = tmp_path / "d.csv"
    texts = [f"t {i}" if i % 5 else "" for i in range(40)]
    pd.DataFrame({"text": texts, "label": [i % 2 for i in range(40)]}).to_csv(path)
    assert len(load_text_dataset("file", str(path))) == 32
    assert "dropped 8 of 40 rows" in capsys.readouterr().err


def test_cuda_on_a_machine_without_it_stops_before_ray():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ConfigError, match="cluster.device='cuda' but this machine has no CUDA"):
        prepare(tiny_config(cluster__device="cuda"))


def test_debug_shows_the_traceback_of_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="model.alpha=0.0 must be positive"):
        main(["--debug", "run", "runs/demo.yaml", "--set", "model.alpha=0", "--out", str(tmp_path)])


def test_an_output_folder_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code = main(["run", "runs/demo.yaml", "--out", str(tmp_path / "file" / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and "Traceback" not in err


def test_a_nearly_full_disk_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 2**20, 2**20))
    code = main(["run", "runs/demo.yaml", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "only 1 MiB free on the disk" in err
    assert not (tmp_path / "run").exists()  # nothing made
