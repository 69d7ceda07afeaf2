"""Runs to an MLflow file store (``decaf-ray export --to mlflow``), offline, no server.

``out`` is the store (``mlflow``'s file backend): one experiment per folder exported (a sweep's
runs together), one MLflow run per decaf-ray run, named after its folder and tagged
``decaf_ray.run``. Params: every config value (``export.config_params``); metrics: every
scalar of ``export.scalars`` with step = round and its wall time as the timestamp; artifact:
``config.yaml``. Needs ``mlflow-skinny`` (``pip install 'decaf-ray[mlflow]'``); to browse,
the full ``mlflow`` package: ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri out``
(MLflow 3 keeps its file store in maintenance mode and asks for that variable; the export sets
it while it writes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.export import RunExport, config_params

RUN_TAG = "decaf_ray.run"
# MLflow's limits on one log_batch call: 1000 metrics, 100 params
METRICS_PER_CALL, PARAMS_PER_CALL = 1000, 100
_NOT_IN_A_KEY = re.compile(r"[^\w\-. /]")  # MLflow keys: letters, digits, _ - . space /


@contextmanager
def file_store_allowed() -> Iterator[None]:
    """``MLFLOW_ALLOW_FILE_STORE=true`` for the block (MLflow 3 refuses the file store
    without it), then as it was."""
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_ALLOW_FILE_STORE"]
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def key(name: str) -> str:
    """``name`` as an MLflow param or metric key (other characters become ``_``)."""
    return _NOT_IN_A_KEY.sub("_", name)


def _experiment(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def _runs_tagged(client: MlflowClient, experiment_id: str, name: str) -> list:
    """The experiment's runs tagged ``decaf_ray.run = name``, matched here rather than in a
    filter string, which a folder name with a quote in it would break."""
    found, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        found += [r for r in page if r.data.tags.get(RUN_TAG) == name]
        token = page.token
        if not token:
            return found


def write_run(client: MlflowClient, experiment_id: str, run: RunExport) -> str:
    """One run into the experiment, replacing (deleting) runs an earlier export made of it;
    returns its MLflow run id."""
    for old in _runs_tagged(client, experiment_id, run.name):
        client.delete_run(old.info.run_id)
    start_ms = int(run.started * 1000)
    tags = {RUN_TAG: run.name, "decaf_ray.path": str(run.path.resolve())}
    run_id = client.create_run(
        experiment_id, start_time=start_ms, tags=tags, run_name=run.name
    ).info.run_id
    params = [Param(key(k), v) for k, v in config_params(run.config).items()]
    for k in range(0, len(params), PARAMS_PER_CALL):
        client.log_batch(run_id, params=params[k : k + PARAMS_PER_CALL])
    s = run.scalars
    stamps = ((run.started + s["wall_s"]) * 1000).round().astype("int64")
    metrics = [
        Metric(key(tag), float(value), int(ms), int(step))
        for tag, value, ms, step in zip(s["tag"], s["value"], stamps, s["step"])
    ]
    for k in range(0, len(metrics), METRICS_PER_CALL):
        client.log_batch(run_id, metrics=metrics[k : k + METRICS_PER_CALL])
    client.log_artifact(run_id, str(run.path / "config.yaml"))
    end_ms = int(stamps.max()) if len(stamps) else start_ms
    client.set_terminated(run_id, end_time=end_ms)
    return run_id


def write(runs: list[RunExport], out: Path) -> None:
    """Every run into the file store ``out``, in the experiment of its folder."""
    with file_store_allowed():
        client = MlflowClient(tracking_uri=out.resolve().as_uri())
        ids: dict[str, str] = {}
        for run in runs:
            if run.experiment not in ids:
                ids[run.experiment] = _experiment(client, run.experiment)
            write_run(client, ids[run.experiment], run)
