"""SIGINT and SIGTERM stop a run after the round in flight: metrics kept, no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from decaf_ray.engine.log import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
name: sig
seed: 3
topology: {name: ring, n: 4, mixing: uniform}
data: {max_samples: 160, eval_samples: 40, max_length: 32}
model: {name: tiny-bert, r: 4, alpha: 8}
train: {rounds: 40, local_steps: 2, batch_size: 8}
eval: {every: 1}
schedule: {debug_sleep_s: {0: 0.3}}
"""
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report


def _start(folder: Path) -> tuple[subprocess.Popen, Path]:
    folder.mkdir()
    (folder / "c.yaml").write_text(CONFIG)
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


def test_a_signal_stops_after_the_round_in_flight(tmp_path):
    """Two runs started together (their Ray and torch start-ups overlap), one stopped by
    SIGINT and one by SIGTERM once it has logged three rounds."""
    runs = {signum: _start(tmp_path / signum.name) for signum in EXIT_CODES}
    waiting, deadline = set(runs), time.time() + 600  # start-ups take minutes on a busy machine
    while waiting:
        for signum in sorted(waiting):
            proc, out = runs[signum]
            logged = len(list(out.glob("metrics.parquet/part-*"))) >= 3
            if logged or proc.poll() is not None or time.time() > deadline:
                proc.send_signal(signum)
                waiting.discard(signum)
        time.sleep(0.2)
    for signum, (proc, out) in runs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == EXIT_CODES[signum], err[-2000:]
        assert "Traceback" not in err and f"stopped by {signum.name} after round" in err
        stopped = int(err.split("after round ")[1].split(";")[0])
        frame = read_metrics(out / "metrics.parquet")
        assert 1 <= stopped < 40 and frame["round"].max() == stopped  # every completed round kept
        assert set(frame[frame["round"] == stopped].metric) >= {"mean_node_acc", "train_loss"}
