"""A run folder belongs to one run: refused when taken or being written; parts are atomic."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_in_process, tiny_config
from decaf_ray.cli import main
from decaf_ray.rundir import RunDirError, claim

REPO = Path(__file__).resolve().parents[1]


def _listing(path: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


def test_a_folder_that_holds_a_run_is_refused_and_left_as_it_was(pool, tmp_path):
    from decaf_ray.runner import run_one

    run_dir = tmp_path / "r"
    cfg = tiny_config(train__rounds=1)
    run_one(cfg, run_dir, pool)
    before = _listing(run_dir)
    assert not list(run_dir.glob("metrics.parquet/.*"))  # no part left half-written
    with pytest.raises(RunDirError, match="already holds a run \\(config.yaml, metrics.parquet"):
        run_one(tiny_config(train__rounds=2, seed=9), run_dir, pool)
    assert _listing(run_dir) == before


def test_the_cli_refuses_an_out_that_holds_a_run_before_ray_starts(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("name: earlier\n")
    code = main(["run", "runs/demo.yaml", "--out", str(tmp_path), "--set", "model.name=tiny-bert"])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run (config.yaml)" in err and "Traceback" not in err
    assert (tmp_path / "config.yaml").read_text() == "name: earlier\n"


def _claim_in_child(path: Path, then: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from decaf_ray.rundir import claim
        try:
            with claim(Path({str(path)!r})):
                {then}
        except Exception as exc:
            print(exc); sys.exit(2)
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_a_folder_being_written_is_refused_to_a_second_process(tmp_path):
    with claim(tmp_path / "r"):
        child = _claim_in_child(tmp_path / "r", "pass")
    assert child.returncode == 2
    assert f"another run (pid {os.getpid()}) is writing into" in child.stdout


def test_a_killed_run_leaves_no_lock_but_its_folder_stays_taken(tmp_path):
    run_dir = tmp_path / "r"
    child = _claim_in_child(run_dir, "os.kill(os.getpid(), 9)")
    assert child.returncode == -9
    with claim(run_dir):  # the lock died with the process; the folder holds no run files
        pass
    (run_dir / "config.yaml").write_text("name: killed\n")
    with pytest.raises(RunDirError, match="already holds a run"):
        with claim(run_dir):
            pass


def test_a_torn_metrics_part_is_skipped_and_named(tmp_path, capsys):
    from analysis import read_run

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    from decaf_ray.config import save_config

    cfg = tiny_config(train__rounds=2)
    save_config(cfg, run_dir / "config.yaml")
    whole = run_in_process(cfg, run_dir)[1]
    (run_dir / "metrics.parquet" / "part-999999.parquet").write_bytes(b"PAR1 torn")
    frame = read_run(run_dir)
    assert len(frame) == len(whole)
    assert "skipped unreadable metrics part" in capsys.readouterr().err


def test_a_log_going_on_past_a_torn_part_starts_from_the_readable_parts(tmp_path, capsys):
    """A resumed log keeps its parts and goes on from their last wall_s; a kept part that
    cannot be read is skipped and named, as the reader does, not a crash of the resume."""
    from decaf_ray.engine.log import MetricsLog, read_metrics

    log = MetricsLog(tmp_path)
    log.add(1, -1, "train_loss", 1.0, 1.0)
    log.flush()
    last = float(read_metrics(log.path)["wall_s"].max())
    (log.path / "part-000001.parquet").write_bytes(b"PAR1 torn")
    again = MetricsLog(tmp_path, keep_parts=2)
    again.add(2, -1, "train_loss", 0.5, 2.0)
    again.flush()
    assert "skipped unreadable metrics part" in capsys.readouterr().err
    frame = read_metrics(log.path)
    assert list(frame["round"]) == [1, 2] and frame["wall_s"].iloc[1] >= last


def test_saved_adapters_load_in_peft_and_give_the_logged_evaluation(pool, tmp_path):
    """adapters/node-<id> and adapters/average are peft folders; loaded on the base model
    with PeftModel.from_pretrained they score what the run logged."""
    import torch
    from peft import PeftModel

    from decaf_ray.engine.log import NETWORK
    from decaf_ray.node.model import _architecture
    from decaf_ray.node.state import to_device
    from decaf_ray.node.tasks import Classify
    from decaf_ray.prepare import prepare
    from decaf_ray.runner import run_one

    cfg = tiny_config(output__save_adapters="all", train__rounds=2)
    frame = run_one(cfg, tmp_path / "r", pool)
    saved = sorted(p.name for p in (tmp_path / "r" / "adapters").iterdir())
    assert saved == ["average", "node-000", "node-001", "node-002", "node-003"]
    assert not list((tmp_path / "r" / "adapters").rglob(".*"))
    prep = prepare(cfg)
    data = to_device(prep.eval_set, torch.device("cpu"))
    last = frame[(frame["round"] == 2) & (frame.metric == "eval_loss")].set_index("node").value
    for name, node in (("node-002", 2), ("average", NETWORK)):
        torch.manual_seed(0)  # the hosts' random tiny base is drawn from seed 0
        base = _architecture(cfg.model, "classify", prep.num_labels).make(True)
        model = PeftModel.from_pretrained(base, str(tmp_path / "r" / "adapters" / name))
        got = Classify(prep.num_labels).evaluate(model, data, 64)
        assert got["loss"] == pytest.approx(last[node], rel=1e-5), name


def test_an_adapter_of_mixed_module_ranks_saves_as_one_peft_rank(tmp_path):
    """The network average keeps some shape groups factored and multiplies others out, so
    its modules can differ in rank; peft has one r, so the saved folder pads them and still
    scores what the host evaluated."""
    import numpy as np
    import torch
    from peft import PeftModel

    from conftest import host_of
    from decaf_ray.algorithms import Adapter
    from decaf_ray.node.model import _architecture
    from decaf_ray.node.state import to_device
    from decaf_ray.node.tasks import Classify

    cfg = tiny_config()
    host, prep = host_of(cfg)
    own = host.adapter(0)
    rng = np.random.default_rng(0)
    mods = own.modules
    wide = {m: 3 if k == 0 else 1 for k, m in enumerate(mods)}  # first module 3x the rank
    A = {m: rng.standard_normal((wide[m] * a.shape[0], a.shape[1])).astype(np.float32) * 0.1
         for m, a in own.A.items()}  # fmt: skip
    B = {m: rng.standard_normal((b.shape[0], wide[m] * b.shape[1])).astype(np.float32) * 0.1
         for m, b in own.B.items()}  # fmt: skip
    mixed = Adapter(A=A, B=B, extra=own.extra)
    assert len({a.shape[0] for a in mixed.A.values()}) == 2
    want = host.evaluate_adapter(mixed)
    for name, data in host.adapter_files(mixed).items():
        (tmp_path / name).write_bytes(data)
    torch.manual_seed(0)  # the host's random tiny base is drawn from seed 0
    base = _architecture(cfg.model, "classify", prep.num_labels).make(True)
    model = PeftModel.from_pretrained(base, str(tmp_path))
    got = Classify(prep.num_labels).evaluate(model, to_device(prep.eval_set, "cpu"), 64)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_save_nodes_adds_those_nodes_adapters_to_the_average(tmp_path, pool):
    from decaf_ray.runner import run_one

    run_one(tiny_config(output__save_nodes=[3, 1], train__rounds=1), tmp_path / "r", pool)
    saved = sorted(p.name for p in (tmp_path / "r" / "adapters").iterdir())
    assert saved == ["average", "node-001", "node-003"]
