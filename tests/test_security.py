"""The local cluster a run starts takes work only from holders of its own fresh token; an
address nothing answers at fails at once with one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

INTRUDER = """
import ray
try:
    ray.init(address={address!r}, configure_logging=False, log_to_driver=False)
    print("ran", ray.get(ray.remote(lambda: 1).remote()))
except Exception as exc:
    print("refused", type(exc).__name__)
"""


def test_the_local_cluster_refuses_a_client_without_its_token(ray_cluster):
    import ray

    assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) >= 32
    address = ray.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = "disabled"  # a client with no token, as anyone on the network
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # its tries at the GCS: 2 (~1 s each), not 20
    code = INTRUDER.format(address=address)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert "refused" in done.stdout and "ran" not in done.stdout
    assert "Unauthenticated" in done.stderr  # refused for its missing token, not unreachable


def test_an_address_nothing_answers_at_fails_within_seconds(tmp_path):
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "decaf_ray.cli", "run", "runs/demo.yaml", "--out", str(tmp_path)]
        + ["--address", "127.0.0.1:9", "--set", "model.name=tiny-bert"]
        + ["--set", "data.max_samples=100"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--address 127.0.0.1:9: nothing answers there" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert time.time() - t0 < 60  # the data is prepared first; the connection fails in 5 s
