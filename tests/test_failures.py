"""Lost hosts: a host process killed mid-run is recovered from the latest checkpoint with the
metrics of an undisturbed run; with recovery off, or a host that hangs, the run stops with
one message naming the host's nodes, the round and the resume command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import comparable, tiny_config
from decaf_ray.config import to_dict
from decaf_ray.engine import checkpoint
from decaf_ray.engine.log import read_metrics

REPO = Path(__file__).resolve().parents[1]


def _start(folder: Path, cfg) -> tuple[subprocess.Popen, Path]:
    folder.mkdir()
    (folder / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    out = folder / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "decaf_ray.cli", "run", str(folder / "c.yaml")]
        + ["--out", str(out), "--no-progress"],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": ""},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


SLOW = {"train__rounds": 5, "checkpoint__every": 2, "schedule__debug_sleep_s": {0: 0.4}}
CONFIGS = {
    "recovered": tiny_config(**SLOW),
    "no_restart": tiny_config(cluster__restarts=0, **SLOW),
    "hung": tiny_config(
        cluster__restarts=0, cluster__call_timeout_s=3.0, schedule__debug_sleep_s={0: 60.0}
    ),
}


class _Run:
    """A CLI run whose output is read, and its end time noted, by a thread of its own."""

    def __init__(self, folder: Path, cfg) -> None:
        self.proc, self.out = _start(folder, cfg)
        self._err, self._ended = "(the run did not end within 900 s)", float("inf")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        _, self._err = self.proc.communicate(timeout=900)
        self._ended = time.time()

    def finish(self) -> tuple[int, str, float]:
        """The exit code, the stderr and the time the process ended."""
        self._reader.join(timeout=900)
        return self.proc.returncode, self._err, self._ended


def _kill_hosts_after_checkpoint(runs: list[_Run]) -> None:
    """0.3 s after each run's first checkpoint appears (into the next round), SIGKILL the
    process of its host of node 0."""
    deadline, due, left = time.time() + 600, {}, list(runs)  # slow start-ups: minutes
    while left and time.time() < deadline:
        now = time.time()
        left = [r for r in left if r.proc.poll() is None]  # one that ended fails its test
        due.update({r: now + 0.3 for r in left if r not in due and checkpoint.saved_rounds(r.out)})
        for run in [r for r in left if due.get(r, now + 1) <= now]:
            hosts = json.loads((run.out / "placement.json").read_text())["hosts"]
            os.kill(next(h["pid"] for h in hosts if 0 in h["nodes"]), signal.SIGKILL)
            left.remove(run)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, _Run]:
    """The three runs, started together (their Ray and torch start-ups overlap), the host of
    node 0 killed in the first two."""
    base = tmp_path_factory.mktemp("failures")
    started = {name: _Run(base / name, cfg) for name, cfg in CONFIGS.items()}
    _kill_hosts_after_checkpoint([started["recovered"], started["no_restart"]])
    yield started
    for run in started.values():
        if run.proc.poll() is None:  # a test failed before its run ended
            run.proc.kill()


def test_a_killed_host_is_recovered_with_undisturbed_metrics(runs, run_tiny):
    code, err, _ = runs["recovered"].finish()
    assert code == 0, err[-3000:]
    assert "restarting every host of t from its checkpoint of round 2" in err
    assert "Traceback" not in err
    got = read_metrics(runs["recovered"].out / "metrics.parquet")
    want = run_tiny(train__rounds=5, checkpoint__every=2)
    pd.testing.assert_frame_equal(comparable(got), comparable(want))


def test_without_recovery_a_lost_host_stops_the_run_with_one_message(runs):
    code, err, _ = runs["no_restart"].finish()
    out = runs["no_restart"].out
    assert code == 1 and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("decaf-ray")]
    assert "failed in round 3 on the host of nodes [0" in lines[0]
    assert "died" in lines[0]  # Ray's cause: the actor died
    assert f"resume with: decaf-ray resume {out}" in err
    assert read_metrics(out / "metrics.parquet")["round"].max() >= 2  # rounds done are kept


def test_a_hung_host_is_detected_by_the_call_timeout(runs):
    code, err, ended = runs["hung"].finish()
    assert code == 1 and "Traceback" not in err, err[-3000:]
    assert "no host answered for 3 s (local training of round 1 on the host of nodes [0" in err
    # the hosts were placed (placement.json) before round 1 began: the run ended before the
    # hung call's 60 s could have, however long Ray took to start on a busy machine
    assert ended - (runs["hung"].out / "placement.json").stat().st_mtime < 60
