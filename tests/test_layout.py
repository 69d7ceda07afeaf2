"""Architecture checks: Ray stays in one module, the CLI starts light, the reader is tidy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RAY_MODULE = "decaf_ray.engine.cluster"


def _modules() -> list[str]:
    """Every module of the three packages, by dotted name."""
    out = []
    for package in ("decaf_ray", "topologies", "analysis"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append(".".join(parts))
    return out


def test_every_module_but_cluster_imports_without_ray():
    """Import each module in turn in one fresh interpreter; none may pull Ray in."""
    modules = [m for m in _modules() if m != RAY_MODULE]
    assert len(modules) > 30
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'ray' in sys.modules:\n"
        "        sys.exit(name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{proc.stderr.strip()[-400:]} imported ray"


def test_only_cluster_imports_ray_or_calls_remote():
    sources = {
        p.relative_to(ROOT).as_posix(): p.read_text() for p in ROOT.glob("decaf_ray/**/*.py")
    }
    importers = sorted(p for p, s in sources.items() if "import ray" in s or "from ray" in s)
    callers = sorted(p for p, s in sources.items() if ".remote(" in s)
    assert importers == callers == ["decaf_ray/engine/cluster.py"]


def test_layers_import_downwards_only():
    """virtual/, math/ and topologies/ are leaves; node/ never reaches into engine/."""
    for folder, banned in [
        ("decaf_ray/virtual", ("decaf_ray.engine", "decaf_ray.node", "decaf_ray.algorithms")),
        ("decaf_ray/math", ("decaf_ray.engine", "decaf_ray.node", "decaf_ray.virtual")),
        ("decaf_ray/node", ("decaf_ray.engine", "decaf_ray.runner", "decaf_ray.prepare")),
        ("decaf_ray/data", ("decaf_ray.engine", "decaf_ray.node")),
        ("topologies", ("decaf_ray",)),
    ]:
        for path in (ROOT / folder).rglob("*.py"):
            runtime = path.read_text().split("if TYPE_CHECKING:")[0]
            for name in banned:
                assert f"import {name}" not in runtime and f"from {name}" not in runtime, (
                    f"{path.relative_to(ROOT)} imports {name}"
                )
    config = (ROOT / "decaf_ray/config.py").read_text()
    assert "from decaf_ray." not in config.split("def _validate_schedule")[0]


@pytest.mark.parametrize("argv", [["topologies", "--n", "4"], ["run", "--help"], ["--help"]])
def test_cli_help_and_topologies_do_not_import_torch(argv):
    code = (
        "import sys\n"
        "from decaf_ray.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "sys.exit(1 if 'torch' in sys.modules else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


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
