"""A multi-node Ray cluster on one machine: hosts spread over its nodes, results unchanged.

The session fixture already runs a local Ray in this process, so the cluster
(``ray.cluster_utils.Cluster``: a head and one worker node, 1 CPU each) lives in a child
process. The child runs ``decaf-ray run CONFIG --address <cluster address>`` and reports the
cluster's node ids; the test checks that the run joined that cluster, that its two hosts sat on
different Ray nodes, and that its metrics equal those of the same config on the local
single-node cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from conftest import TIMING, tiny_config
from decaf_ray.config import to_dict

CHILD = """
import json, sys
from ray.cluster_utils import Cluster
from decaf_ray.cli import main

config, out = sys.argv[1], sys.argv[2]
cluster = Cluster(
    initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
)
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
try:
    rc = main(["run", config, "--address", cluster.address, "--out", out, "--no-progress"])
    nodes = [node.node_id for node in cluster.list_all_nodes()]
finally:
    cluster.shutdown()
print(json.dumps({"rc": rc, "address": cluster.address, "ray_nodes": nodes}))
"""


def _values(frame: pd.DataFrame) -> pd.Series:
    keep = frame[~frame.metric.isin(TIMING)]
    return keep.set_index(["round", "node", "metric"])["value"].sort_index()


def test_two_node_cluster_spreads_hosts_and_matches_single_node(run_tiny, tmp_path: Path):
    cfg = tiny_config(algorithm__name="decaf")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / "multinode"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        single = _values(run_tiny(algorithm__name="decaf"))  # while the child starts its cluster
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["rc"] == 0

    hosts = json.loads((out / "placement.json").read_text())["hosts"]
    assert sorted(i for h in hosts for i in h["nodes"]) == [0, 1, 2, 3]
    placed = {h["ray_node"] for h in hosts}
    assert len(hosts) == 2 and len(placed) == 2, hosts  # one host on each Ray node (SPREAD)
    assert placed <= set(report["ray_nodes"])  # it joined the cluster, did not start its own

    multi = _values(pd.read_parquet(out / "metrics.parquet"))
    pd.testing.assert_series_equal(multi, single, rtol=1e-6, atol=1e-9)
