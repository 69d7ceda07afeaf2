"""Bad input gets one clear error that names the bad value, before any training starts."""

from __future__ import annotations

import numpy as np
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
