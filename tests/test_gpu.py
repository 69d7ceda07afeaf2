"""GPU placement: hosts pinned to a GPU through Ray resources. Skipped on machines without one."""

from __future__ import annotations

import pytest
import torch

from decaf_ray.engine.log import NETWORK

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_hosts_are_pinned_to_the_gpu_and_train_there(pool, tmp_path):
    from conftest import tiny_config
    from decaf_ray.runner import run_one

    cfg = tiny_config(
        algorithm__name="decaf", cluster__gpus_per_host=0.5, cluster__nodes_per_actor=2
    )
    frame = run_one(cfg, tmp_path, pool)
    import json

    placement = json.loads((tmp_path / "placement.json").read_text())["hosts"]
    assert len(placement) == 2
    for host in placement:
        assert host["device"].startswith("cuda")
        assert host["gpu_ids"], "Ray assigned no GPU to the host"
    cons = frame[(frame.node == NETWORK) & (frame.metric == "product_consensus")]
    assert cons.value.notna().all()


def test_gpu_and_cpu_runs_agree(pool, tmp_path):
    from conftest import tiny_config
    from decaf_ray.runner import run_one

    def final_loss(**kw):
        cfg = tiny_config(algorithm__name="dlora", **kw)
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        f = run_one(cfg, d, pool)
        return f[(f.node == NETWORK) & (f.metric == "train_loss")].value.to_numpy()

    # sequential on both (batched training draws other dropout masks, so it is compared apart)
    gpu = final_loss(cluster__device="cuda", cluster__gpus_per_host=0.5, train__batched_nodes="off")
    cpu = final_loss(cluster__device="cpu", train__batched_nodes="off")
    assert gpu == pytest.approx(cpu, rel=1e-3)
    batched = final_loss(cluster__device="cuda", cluster__gpus_per_host=0.5)  # auto: batched
    assert batched == pytest.approx(cpu, rel=0.05)
