"""Runs to TensorBoard event files (``decaf-ray export --to tensorboard``).

``out/<run>/events.out.tfevents.*``, one folder per run (TensorBoard's runs), written with
torch's ``SummaryWriter`` (needs the ``tensorboard`` package: ``pip install
'decaf-ray[export]'``). In each: every scalar of ``export.scalars`` (step: the round, event
time: the run's start + ``wall_s``), the run's config as text (``config``, its YAML) and as
hparams (``HPARAMS`` and every config value that differs between the exported runs, against
the final ``network/<metric>`` of ``HPARAM_METRICS``). View with ``tensorboard --logdir out``.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from analysis.export import RunExport
from analysis.reader import flatten

# config values always in the hparams table (those that differ between runs are added)
HPARAMS = (
    "algorithm.name",
    "topology.name",
    "topology.n",
    "topology.mixing",
    "data.partition",
    "model.name",
    "model.r",
    "train.rounds",
    "train.local_steps",
    "train.lr",
    "schedule.mode",
    "seed",
)
HPARAM_METRICS = ("mean_node_acc", "mean_node_f1", "eval_acc", "product_consensus", "train_loss")
EVENTS = "events.out.tfevents.*"


def _hparam(value: object) -> bool | int | float | str:
    """A value the hparams plugin takes: numbers, booleans and strings as they are, else str."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def hparam_columns(runs: list[RunExport]) -> list[str]:
    """``HPARAMS`` that the runs have, then the other config values that differ between them
    (``name`` aside: the run's folder names it)."""
    flat = [flatten(r.config) for r in runs]
    keys = [k for k in flat[0] if k != "name"] if flat else []
    varying = [k for k in keys if len({str(f.get(k)) for f in flat}) > 1 and k not in HPARAMS]
    return [k for k in HPARAMS if any(k in f for f in flat)] + varying


def _config_text(config: dict) -> str:
    """The config as a markdown code block (indented: the text plugin renders markdown)."""
    text = yaml.safe_dump(config, sort_keys=False)
    return "\n".join("    " + line for line in text.splitlines())


def write_run(run: RunExport, folder: Path, columns: list[str]) -> None:
    """One run's event file into ``folder``, replacing the event files an earlier export left."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(EVENTS):
        old.unlink()
    flat = flatten(run.config)
    final = run.scalars.groupby("tag")["value"].last()  # scalars are sorted by tag, step
    metrics = {f"network/{m}": final[f"network/{m}"] for m in HPARAM_METRICS}
    metrics = {tag: v for tag, v in metrics.items() if tag in final.index}
    with SummaryWriter(log_dir=str(folder), max_queue=10_000, flush_secs=3600) as writer:
        for tag, step, value, wall in run.scalars.itertuples(index=False):
            writer.add_scalar(tag, value, global_step=step, walltime=run.started + wall)
        writer.add_text("config", _config_text(run.config), global_step=0, walltime=run.started)
        chosen = {k: _hparam(flat.get(k)) for k in columns}
        for summary in hparams(chosen, metrics):  # experiment, session start, session end
            writer.file_writer.add_summary(summary, walltime=run.started)


def write(runs: list[RunExport], out: Path) -> None:
    """Every run into ``out/<run name>/``."""
    columns = hparam_columns(runs)
    for run in runs:
        write_run(run, out / run.name, columns)
