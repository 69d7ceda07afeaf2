"""Post-hoc analysis of decaf-ray runs: read metrics of one or many runs into pandas,
summarise them over seeds, draw figures and write a report.

The figures and the report need matplotlib (``pip install 'decaf-ray[plot]'``); they are
imported on first use, so the readers and ``summarise`` work without it.
"""

from importlib import import_module

from analysis.reader import find_runs, read_run, read_runs
from analysis.summary import Summary, by_setting, summarise
from analysis.timing import time_to
from analysis.wall import host_blocks, round_split, wall_table

_LAZY = {  # name: module that defines it (imports matplotlib)
    "plot_consensus": "analysis.figures",
    "plot_accuracy": "analysis.figures",
    "plot_interference": "analysis.figures",
    "plot_spectral_gap": "analysis.figures",
    "plot_vs_rank": "analysis.figures",
    "plot_label_histogram": "analysis.figures",
    "plot_accuracy_vs_bytes": "analysis.figures",
    "plot_time_to_target": "analysis.figures",
    "write_report": "analysis.report",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


__all__ = [
    "Summary",
    "by_setting",
    "find_runs",
    "host_blocks",
    "read_run",
    "read_runs",
    "round_split",
    "summarise",
    "time_to",
    "wall_table",
    *_LAZY,
]
