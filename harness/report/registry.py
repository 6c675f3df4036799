"""Where the report finds a task's measured-length definitions and its figures.

Measures belong to the task (`tasks.base.get_task(name).measures`, the default first); figures to the
report (harness/report/figures/<task>.py: `FIGURES: dict[name, fn(ctx, ax)]`, optionally `EXTRA_MEASURES`
and `TABLES`, what those figures draw beyond the task's measures, and `COLUMNS`, record columns derived
for those measures). A figure function may return a string: a sentence appended to its caption (what this
figure shows or lacks for these runs, e.g. no CI band with one sample). Figure modules are imported lazily,
by name, so a task without figures still gets tables and an unknown task gets neither.
"""

from __future__ import annotations

import contextlib
import importlib
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


def task_measures(task: str) -> list[MeasureSpec]:
    """A task's measured-length definitions, its default first ([] for a task this install lacks)."""
    from tasks.base import get_task

    try:
        return list(get_task(task).measures)
    except InputError:
        return []


def task_figures(task: str) -> FigureSet:
    """The FigureSet of harness.report.figures.<task> (an empty one when there is no such module)."""
    module: Any = None
    with contextlib.suppress(ImportError):
        module = importlib.import_module(f"harness.report.figures.{task}")
    return FigureSet(dict(getattr(module, "FIGURES", {})), tuple(getattr(module, "EXTRA_MEASURES", ())),
                     dict(getattr(module, "TABLES", {})), dict(getattr(module, "COLUMNS", {})))
