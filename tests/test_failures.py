"""Lost hosts: a host process killed mid-run is recovered from the latest checkpoint with the
metrics of an undisturbed run; with recovery off, or a host that hangs, the run stops with
one message naming the host's nodes, the round and the resume command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from conftest import comparable, tiny_config
from decaf_ray.config import to_dict
from decaf_ray.engine import checkpoint
from decaf_ray.engine.log import read_metrics

REPO = Path(__file__).resolve().parents[1]


def _start(tmp_path: Path, cfg) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "decaf_ray.cli", "run", str(tmp_path / "c.yaml")]
        + ["--out", str(out), "--no-progress"],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def _kill_a_host_after_checkpoint(out: Path) -> int:
    """Once the first checkpoint exists, SIGKILL the process of the host of node 0."""
    deadline = time.time() + 180
    while time.time() < deadline and not checkpoint.saved_rounds(out):
        time.sleep(0.1)
    time.sleep(0.3)  # into the next round
    hosts = json.loads((out / "placement.json").read_text())["hosts"]
    pid = next(h["pid"] for h in hosts if 0 in h["nodes"])
    os.kill(pid, signal.SIGKILL)
    return pid


SLOW = {"train__rounds": 5, "checkpoint__every": 2, "schedule__debug_sleep_s": {0: 0.4}}


def test_a_killed_host_is_recovered_with_undisturbed_metrics(tmp_path, run_tiny):
    proc, out = _start(tmp_path, tiny_config(**SLOW))
    _kill_a_host_after_checkpoint(out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "restarting every host of t from its checkpoint of round 2" in err
    assert "Traceback" not in err
    got = read_metrics(out / "metrics.parquet")
    want = run_tiny(train__rounds=5, checkpoint__every=2)
    pd.testing.assert_frame_equal(comparable(got), comparable(want))


def test_without_recovery_a_lost_host_stops_the_run_with_one_message(tmp_path):
    proc, out = _start(tmp_path, tiny_config(cluster__restarts=0, **SLOW))
    _kill_a_host_after_checkpoint(out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("decaf-ray")]
    assert "failed in round 3 on the host of nodes [0" in lines[0]
    assert "died" in lines[0]  # Ray's cause: the actor died
    assert f"resume with: decaf-ray resume {out}" in err
    assert read_metrics(out / "metrics.parquet")["round"].max() >= 2  # rounds done are kept


def test_a_hung_host_is_detected_by_the_call_timeout(tmp_path):
    cfg = tiny_config(
        cluster__restarts=0, cluster__call_timeout_s=3.0, schedule__debug_sleep_s={0: 60.0}
    )
    t0 = time.time()
    proc, out = _start(tmp_path, cfg)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert "no host answered for 3 s (local training of round 1 on the host of nodes [0" in err
    assert time.time() - t0 < 60  # well before the hung call would have ended
