"""Group labels: each group of runs named by what sets it apart from the others.

A label is the method, then the values of the compared columns that name a thing (topology,
schedule, data, partition, model, task), then in parentheses the options set otherwise than
decaf-ray's default, as ``key=value`` in YAML spelling::

    decaf, ring                 decaf, complete
    decaf (align=true)          decaf (sv_split=all_in_B)
    decaf, async (straggler_fraction=0.1)

An option is left out where it has its default value (``align=false``), except a number (a
swept ``lr`` or ``n``: every group says its own). The mixing rule is left out where it follows
from the topology, each topology with one rule (the study's two_hubs uses dimat, the others
uniform). Labels always tell groups apart: in the rare case these rules would give two groups
one label (a hand-edited config with ``align: "true"``, a string, beside ``align: true``), every
compared column is named in full, ``key=value`` as read.
"""

from __future__ import annotations

from functools import cache

import pandas as pd

from analysis.series import METHOD, compared_columns

# compared columns shown by their value alone: it names the thing ("ring", "async", "iid")
NAMED = (
    "topology.name",
    "schedule.mode",
    "data.source",
    "data.partition",
    "model.name",
    "task.name",
)
# a compared column left out where the named column determines it: column: named column
FOLLOWS = {"topology.mixing": "topology.name"}


@cache
def config_defaults() -> dict[str, object]:
    """Every scalar config key (dotted) and its default in ``decaf_ray.config.RunConfig``."""
    from analysis.reader import flatten
    from decaf_ray.config import RunConfig, to_dict

    return flatten(to_dict(RunConfig()))


def yaml_value(value: object) -> str:
    """A config value as it is written in YAML: true/false, null, 0.1, ring."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "null"
    return str(value)


def _is_default(column: str, value: object) -> bool:
    """True where ``value`` is the default of ``column`` and that default is not a number."""
    defaults = config_defaults()
    if column not in defaults:
        return False
    default = defaults[column]
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return False
    return yaml_value(value) == yaml_value(default)


def _follows(per_run: pd.DataFrame, cols: list[str]) -> set[str]:
    """Columns of ``cols`` named in ``FOLLOWS`` whose value each value of their named column
    determines over these runs."""
    out = set()
    for c, named in FOLLOWS.items():
        if c in cols and named in cols:
            values = per_run[[named, c]].astype(str)
            if values.groupby(named)[c].nunique().max() == 1:
                out.add(c)
    return out


def _compose(row: pd.Series, cols: list[str], keys: dict[str, str]) -> str:
    """``method, named... (key=value, ...)``, options at their default left out."""
    head = [str(row[METHOD])] if METHOD in cols else []
    head += [yaml_value(row[c]) for c in cols if c in NAMED]
    options = [
        f"{keys[c]}={yaml_value(row[c])}"
        for c in cols
        if c not in NAMED and c != METHOD and not _is_default(c, row[c])
    ]
    text = ", ".join(head)
    if options:
        text = f"{text} ({', '.join(options)})" if text else ", ".join(options)
    return text


def _left_out(column: str, leave_out: str | tuple[str, ...]) -> bool:
    """True where ``column`` is one of ``leave_out``, or under one ending in a dot."""
    names = (leave_out,) if isinstance(leave_out, str) else leave_out
    return any(n and (column == n or (n.endswith(".") and column.startswith(n))) for n in names)


def run_labels(frame: pd.DataFrame, leave_out: str | tuple[str, ...] = "") -> pd.Series:
    """The group label of each run (index: run), e.g. ``decaf, ring (align=true)``.
    Columns in ``leave_out`` are not named: a column (``"model.r"``) or, ending in a dot, every
    column under it (``"topology."``), where that is the x axis of a figure."""
    per_run = frame.drop_duplicates("run").set_index("run")
    compared = compared_columns(frame)
    cols = [c for c in compared if not _left_out(c, leave_out)]
    # a column that follows a named one is left out with it, too (two_hubs' dimat mixing)
    shown = [c for c in cols if c not in _follows(per_run, compared)]

    options = [c for c in shown if c not in NAMED and c != METHOD]
    short = [c.rsplit(".", 1)[-1] for c in options]
    keys = {c: s if short.count(s) == 1 else c for c, s in zip(options, short)}  # else in full

    labels = per_run.apply(lambda row: _compose(row, shown, keys), axis=1)
    groups = per_run[shown].astype(str)  # the values that make the groups (compared_columns)
    if shown and groups.agg("\x1f".join, axis=1).groupby(labels).nunique().max() > 1:
        # two groups, one label: every compared column in full, as the groups see it
        labels = groups.apply(lambda row: " ".join(f"{c}={v}" for c, v in row.items()), axis=1)
    return labels.rename("label")
