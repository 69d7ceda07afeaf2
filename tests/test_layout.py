"""Architecture checks: Ray stays in its modules; the analysis reader returns tidy frames."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RAY_FREE = [
    "decaf_ray.math",
    "decaf_ray.algorithms",
    "decaf_ray.data",
    "decaf_ray.consensus",
    "decaf_ray.config",
    "decaf_ray.host",
    "decaf_ray.batched",
    "decaf_ray.prepare",
    "topologies",
    "analysis",
]


@pytest.mark.parametrize("module", RAY_FREE)
def test_module_never_imports_ray(module):
    code = f"import sys, {module}; sys.exit(1 if 'ray' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_only_cluster_and_coordinators_import_ray():
    importers = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "decaf_ray").rglob("*.py")
        if "import ray" in p.read_text() or "from ray" in p.read_text()
    )
    assert importers == ["decaf_ray/cluster.py"]


def test_read_runs_gives_metrics_with_config_columns(run_tiny, tmp_path):
    from analysis import read_runs

    run_tiny(algorithm__name="dlora", train__rounds=1)
    run_tiny(algorithm__name="decaf", train__rounds=1)
    df = read_runs(tmp_path)
    assert set(df["algorithm.name"]) == {"dlora", "decaf"}
    assert {"round", "node", "metric", "value", "wall_s", "run", "topology.n"} <= set(df.columns)
    cons = df[(df.metric == "product_consensus")].groupby("algorithm.name").value.count()
    assert cons.to_dict() == {"decaf": 1, "dlora": 1}  # one round each, one row per round


def test_read_runs_names_a_folder_without_runs(tmp_path):
    from analysis import read_runs

    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_runs(tmp_path)
