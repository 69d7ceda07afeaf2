"""The fine-tuned adapters of a finished run, saved as peft adapter folders.

``output.save_adapters``: ``average`` (the default) saves the network-average model, the one
logged at node -1: the mean of every node's update, exactly (of rank r + n r, or the layer's
width once that is smaller: it is summed on the hosts, see :mod:`decaf_ray.node.measure`);
``all`` also saves each node's own adapter; ``none`` saves nothing. ``output.save_nodes``
adds the adapters of the nodes it lists to ``average``. A host makes the files
(it holds the peft model) and the driver writes them into the run folder, so the folder can
live on the driver's machine of a cluster. Each folder loads with
``PeftModel.from_pretrained(base_model, folder)`` on the run's base model.
"""

from __future__ import annotations

import os
from pathlib import Path

from decaf_ray.config import RunConfig
from decaf_ray.engine.hosts import HostGroup
from decaf_ray.node import Part


def save_adapters(
    cfg: RunConfig, states: dict[int, Part], hosts: HostGroup, run_dir: Path, rank: int
) -> list[Path]:
    """Write the adapters ``cfg.output.save_adapters`` asks for; return their folders
    (``rank``: the network's widest LoRA rank)."""
    how = cfg.output.save_adapters
    if how == "none" or not states:
        return []
    tickets = []
    wanted = set(states) if how == "all" else set(cfg.output.save_nodes)
    for k, block in enumerate(hosts.blocks):
        named = {f"node-{i:03d}": states[i] for i in block if i in states and i in wanted}
        if named:
            tickets.append(hosts.adapter_files(k, named))
    average = hosts.average(states, rank)
    tickets.append(hosts.adapter_files(0, {"average": average}))
    folders = []
    for reply in hosts.gather(tickets):
        for name, files in reply.items():
            folders.append(_write(run_dir / "adapters" / name, files))
    return sorted(folders)


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    """Each file written aside and renamed: a folder holds whole files or none."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)
    return folder
