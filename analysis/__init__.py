"""Post-hoc analysis of decaf-ray runs: read metrics of one or many runs into pandas."""

from analysis.reader import find_runs, read_run, read_runs
from analysis.timing import time_to

__all__ = ["find_runs", "read_run", "read_runs", "time_to"]
