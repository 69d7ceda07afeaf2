"""decaf-ray export: the report's sweep (dlora and decaf, 2 seeds) to TensorBoard and MLflow,
read back with each tool's own reader and compared with the parquet's values.

The series and parameters are checked as pure functions first; the sweep is the session's
``tiny_sweep`` (shared with tests/test_report.py), exported, never rerun.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from analysis.export import MissingExtra, config_params, export, scalars
from decaf_ray.cli import main
from decaf_ray.engine.log import MetricsLog, read_metrics

# ------------------------------------------------------------------ pure functions


def _metrics(*rows: tuple) -> pd.DataFrame:
    """A metrics frame of (round, node, metric, value) rows; wall_s = 10 round + node."""
    frame = pd.DataFrame(rows, columns=["round", "node", "metric", "value"])
    return frame.assign(wall_s=10.0 * frame["round"] + frame["node"], virtual_s=0.0)


def test_network_rows_node_rows_and_their_tags():
    frame = _metrics(
        (1, -1, "train_loss", 0.5),
        (1, 0, "train_loss", 0.4),
        (1, 1, "train_loss", 0.6),
        (2, -1, "train_loss", 0.3),
        (0, 1, "label_count:sport", 7.0),  # the report's histogram: not a series
    )
    s = scalars(frame).set_index(["tag", "step"])
    assert s["value"].to_dict() == {
        ("network/train_loss", 1): 0.5,
        ("network/train_loss", 2): 0.3,
        ("node/0/train_loss", 1): 0.4,
        ("node/1/train_loss", 1): 0.6,
    }
    assert s.loc[("node/1/train_loss", 1), "wall_s"] == 11.0
    assert scalars(frame, nodes=False)["tag"].unique().tolist() == ["network/train_loss"]


def test_per_node_metrics_without_a_network_row_get_their_mean_over_nodes():
    frame = _metrics(
        (1, 0, "interference", 1.0),
        (1, 1, "interference", 3.0),
        (1, -1, "bytes_sent", 9.0),  # a network row exists: it is the network's value
        (1, 0, "bytes_sent", 4.0),
        (1, 0, "idle_s", 2.0),  # not a summed-up metric: no network series
    )
    net = scalars(frame, nodes=False).set_index("tag")
    assert net["value"].to_dict() == {"network/bytes_sent": 9.0, "network/interference": 2.0}
    assert net.loc["network/interference", "wall_s"] == 11.0  # the later node's


def test_config_params_spell_every_value_as_yaml():
    config = {
        "seed": 1,
        "algorithm": {"name": "decaf", "align": True},
        "schedule": {"deadline_s": None, "link_loss": {}},
        "model": {"ranks": [4, 8], "rank_tiers": {4: 0.5}},
        "train": {"lr": 0.005},
    }
    assert config_params(config) == {
        "seed": "1",
        "algorithm.name": "decaf",
        "algorithm.align": "true",
        "schedule.deadline_s": "null",
        "schedule.link_loss": "{}",
        "model.ranks": "[4, 8]",
        "model.rank_tiers.4": "0.5",
        "train.lr": "0.005",
    }


# ------------------------------------------------------------------ errors, one line each


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("decaf-ray: error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    return err


def test_an_unknown_target_names_the_ones_there_are(tmp_path, capsys):
    err = _one_line_error(capsys, ["export", str(tmp_path), "--to", "wandb"])
    assert "unknown export target 'wandb': choose one of tensorboard, mlflow" in err
    with pytest.raises(ValueError, match="'wandb'"):
        export([tmp_path], "wandb")


@pytest.mark.parametrize("to", ["tensorboard", "mlflow"])
def test_a_folder_that_is_not_a_run_is_named(tmp_path, capsys, to):
    (tmp_path / "notes").mkdir()
    err = _one_line_error(capsys, ["export", str(tmp_path / "notes"), "--to", to])
    assert "holds no runs" in err and str(tmp_path / "notes") in err
    err = _one_line_error(capsys, ["export", str(tmp_path / "missing"), "--to", to])
    assert "does not exist" in err


@pytest.mark.parametrize(
    "to, package, extra", [("tensorboard", "tensorboard", "export"), ("mlflow", "mlflow", "mlflow")]
)
def test_a_missing_writer_package_names_the_extra(
    tmp_path, monkeypatch, capsys, to, package, extra
):
    (tmp_path / "config.yaml").write_text("name: x\n")  # a run folder, of one row
    log = MetricsLog(tmp_path)
    log.add(1, -1, "train_loss", 0.5, virtual_s=1.0)
    log.flush()
    monkeypatch.setitem(sys.modules, package, None)  # import <package> now fails
    for name in list(sys.modules):
        if name.startswith((f"analysis.to_{to}", f"{package}.", "torch.utils.tensorboard")):
            monkeypatch.delitem(sys.modules, name)
    err = _one_line_error(capsys, ["export", str(tmp_path), "--to", to])
    assert f"needs the {package} package" in err
    assert f"install the {extra} extra: pip install 'decaf-ray[{extra}]'" in err
    with pytest.raises(MissingExtra) as caught:
        export([tmp_path], to)
    assert isinstance(caught.value, ImportError)  # what a notebook would catch


# ------------------------------------------------------------------ the real sweep


@pytest.fixture(scope="module")
def sweep_dir(tiny_sweep):
    return tiny_sweep


def _parquet(run_dir, metric: str, node: int = -1) -> pd.DataFrame:
    rows = read_metrics(run_dir / "metrics.parquet")
    rows = rows[(rows.metric == metric) & (rows.node == node)]
    return rows.sort_values("round").reset_index(drop=True)


def test_tensorboard_scalars_are_the_parquet_values_per_round(sweep_dir, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    assert main(["export", str(sweep_dir), "--to", "tensorboard", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"tensorboard: {tmp_path}"
    runs = ["rep-decaf-1", "rep-decaf-2", "rep-dlora-1", "rep-dlora-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == runs

    run = sweep_dir / "rep-decaf-1"
    acc = EventAccumulator(str(tmp_path / run.name), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"network/product_consensus", "network/mean_node_acc", "node/3/tsvd_tail"} <= tags
    assert not any("label_count" in t for t in tags)
    started = (run / "config.yaml").stat().st_mtime
    for tag, metric, node in [
        ("network/product_consensus", "product_consensus", -1),
        ("network/mean_node_acc", "mean_node_acc", -1),
        ("node/2/train_loss", "train_loss", 2),
    ]:
        want = _parquet(run, metric, node)
        events = acc.Scalars(tag)
        assert [e.step for e in events] == want["round"].tolist()
        np.testing.assert_allclose([e.value for e in events], want["value"], rtol=1e-6)  # fp32
        np.testing.assert_allclose(
            [e.wall_time - started for e in events], want["wall_s"], atol=1e-3
        )
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    algorithm:\n      name: decaf" in text  # the YAML, as a markdown code block
    start = HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["algorithm.name"].string_value == "decaf"
    assert start.hparams["topology.n"].number_value == 4

    # again: each run's earlier events are replaced, not doubled
    export([sweep_dir], "tensorboard", tmp_path, nodes=False)
    assert len(list((tmp_path / run.name).glob("events.out.tfevents.*"))) == 1
    again = EventAccumulator(str(tmp_path / run.name))
    again.Reload()
    assert len(again.Scalars("network/mean_node_acc")) == len(acc.Scalars("network/mean_node_acc"))
    assert not any(t.startswith("node/") for t in again.Tags()["scalars"])


def test_mlflow_file_store_holds_params_and_metrics_per_round(sweep_dir, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from analysis.to_mlflow import RUN_TAG, file_store_allowed

    out = export([sweep_dir], "mlflow", tmp_path / "mlruns")
    assert out == tmp_path / "mlruns"
    with file_store_allowed():
        client = MlflowClient(tracking_uri=out.as_uri())
        experiment = client.get_experiment_by_name(sweep_dir.name)
        found = client.search_runs([experiment.experiment_id])
        assert sorted(r.data.tags[RUN_TAG] for r in found) == [
            "rep-decaf-1",
            "rep-decaf-2",
            "rep-dlora-1",
            "rep-dlora-2",
        ]
        run = next(r for r in found if r.data.tags[RUN_TAG] == "rep-dlora-2")
        assert run.info.run_name == "rep-dlora-2" and run.info.status == "FINISHED"
        params = run.data.params
        assert params["algorithm.name"] == "dlora" and params["seed"] == "2"
        assert params["train.lr"] == "0.005" and params["topology.name"] == "ring"
        for key, metric, node in [
            ("network/mean_node_acc", "mean_node_acc", -1),
            ("network/interference", "interference", -1),  # dlora: mean over nodes
            ("node/1/bytes_sent", "bytes_sent", 1),
        ]:
            history = client.get_metric_history(run.info.run_id, key)
            if metric == "interference":
                rows = read_metrics(sweep_dir / "rep-dlora-2" / "metrics.parquet")
                rows = rows[rows.metric == metric]
                want = rows.groupby("round", as_index=False)["value"].mean()
            else:
                want = _parquet(sweep_dir / "rep-dlora-2", metric, node)
            assert [m.step for m in history] == want["round"].tolist()
            np.testing.assert_allclose([m.value for m in history], want["value"], rtol=1e-12)
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert artifacts == ["config.yaml"]

        export([sweep_dir], "mlflow", out, nodes=False)  # again: each run replaced
        assert len(client.search_runs([experiment.experiment_id])) == 4


def test_mlflow_export_twice_replaces_a_run_whose_folder_name_has_a_quote(sweep_dir, tmp_path):
    pytest.importorskip("mlflow")
    import shutil

    from mlflow.tracking import MlflowClient

    from analysis.to_mlflow import RUN_TAG, file_store_allowed

    folder = tmp_path / "runs"
    shutil.copytree(sweep_dir / "rep-decaf-1", folder / "bob's-run")
    out = tmp_path / "mlruns"
    for _ in range(2):
        export([folder], "mlflow", out, nodes=False)
    with file_store_allowed():
        client = MlflowClient(tracking_uri=out.as_uri())
        found = client.search_runs([client.get_experiment_by_name("runs").experiment_id])
    assert [r.data.tags[RUN_TAG] for r in found] == ["bob's-run"]
