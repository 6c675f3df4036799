"""Where the report finds a task's measured-length definitions and its figures.

Measures belong to the task (`tasks.base.get_task(name).measures`, the default first); figures to the
report (harness/report/figures/<task>.py: `FIGURES: dict[name, fn(ctx, ax)]`, optionally `EXTRA_MEASURES`
and `TABLES`, what those figures draw beyond the task's measures, and `COLUMNS`, record columns derived
for those measures). A figure function may return a string: a sentence appended to its caption (what this
figure shows or lacks for these runs, e.g. no CI band with one sample). Figure modules are imported lazily,
by name, so a task without figures still gets tables and an unknown task gets neither.

Several tasks defined by one package of tasks/ share one figure module: a task without a module of its own
name gets the one named after the tasks/ package that defines its class (RULER's 13 configs, all made in
tasks/ruler/, get figures/ruler.py). Such a module may also export `GROUP` (a TaskGroup: figures and a
headline line drawn once over all of its tasks in a report, e.g. RULER's family x length heatmap) and
`THRESHOLD_MEASURES` (the keys of the definitions whose threshold `report --threshold` sets).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.core.errors import InputError
from harness.core.metrics import MeasureSpec

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from harness.report.analysis import FigureContext
    from harness.report.tables import TableSpec

FigureFn = Callable[["FigureContext", "Axes"], "str | None"]
ColumnFn = Callable[["pd.DataFrame"], "pd.Series | None"]


@dataclass(frozen=True)
class FigureSet:
    """A task's figure functions (in report order) and what the analysis step computes for them."""

    figures: dict[str, FigureFn] = field(default_factory=dict)
    extra_measures: tuple[MeasureSpec, ...] = ()
    tables: dict[str, TableSpec] = field(default_factory=dict)
    columns: dict[str, ColumnFn] = field(default_factory=dict)
    threshold_measures: tuple[str, ...] = ()
    group: TaskGroup | None = None


@dataclass(frozen=True)
class TaskGroup:
    """Tasks that a report reads together (a figure module's `GROUP`): one section after their own, with
    figures `fn(group_ctx, ax)` over all of them (group_ctx: harness.report.groups.GroupContext) and, per
    setting, one headline line naming the task that fails first by `measure` (the key of a definition every
    member has), or by `fallback` where no member measured a length by `measure`."""

    name: str
    measure: str
    fallback: str = ""
    order: tuple[str, ...] = ()  # the members' order in tables, figures and lines (others after, by name)
    figures: dict[str, Callable[[Any, Axes], str | None]] = field(default_factory=dict)


def task_measures(task: str) -> list[MeasureSpec]:
    """A task's measured-length definitions, its default first ([] for a task this install lacks)."""
    from tasks.base import get_task

    try:
        return list(get_task(task).measures)
    except InputError:
        return []


def task_figures(task: str) -> FigureSet:
    """The FigureSet of harness.report.figures.<task>, else of the module named after the tasks/ package
    that defines the task (an empty one when there is neither)."""
    module: Any = None
    for name in dict.fromkeys((task, _task_package(task))):
        if name and module is None and importlib.util.find_spec(f"harness.report.figures.{name}") is not None:
            with contextlib.suppress(ImportError):
                module = importlib.import_module(f"harness.report.figures.{name}")
    return FigureSet(dict(getattr(module, "FIGURES", {})), tuple(getattr(module, "EXTRA_MEASURES", ())),
                     dict(getattr(module, "TABLES", {})), dict(getattr(module, "COLUMNS", {})),
                     tuple(getattr(module, "THRESHOLD_MEASURES", ())), getattr(module, "GROUP", None))


def _task_package(task: str) -> str:
    """'ruler' for a task whose class is defined in tasks/ruler/ ('' for a task defined in a module of its
    own name, or unknown)."""
    from tasks.base import get_task

    try:
        parts = type(get_task(task)).__module__.split(".")
    except InputError:
        return ""
    return parts[1] if len(parts) > 2 and parts[0] == "tasks" and parts[1] != task else ""
