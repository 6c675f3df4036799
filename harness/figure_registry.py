"""Where the report finds a task's figures and measured-length definitions.

A task module may define `FIGURES: dict[name, fn(records_df, ax)]` and `MEASURES` (a list of MeasureSpec,
the first the default; `MEASURE` alone still works as a one-definition list). They are taken from
`tasks.<task>`, falling back to `harness.report_<task>`, so a task without its own report module still
gets a report. Modules are imported here, lazily: task figure modules import the analysis at load time.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.errors import InputError
from harness.measure import MeasureSpec

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _task_modules(task: str) -> list[Any]:
    """tasks.<task> (when it loads) and harness.report_<task> (when it exists), in that order."""
    modules = []
    try:
        from tasks.base import get_task_module

        modules.append(get_task_module(task))
    except (InputError, ImportError):
        pass
    with contextlib.suppress(ImportError):
        modules.append(importlib.import_module(f"harness.report_{task}"))
    return modules


def task_measures(task: str) -> list[MeasureSpec]:
    """A task's measured-length definitions, its default first: MEASURES of tasks.<task>, else of
    harness.report_<task>; a module with only MEASURE has that one. The fallback's MEASURES are used for a task
    module that re-exports only its MEASURE when their first entry is that same spec."""
    first: MeasureSpec | None = None
    for module in _task_modules(task):
        measures = getattr(module, "MEASURES", None)
        if measures:
            measures = list(measures)
            if first is None or measures[0] == first:
                return measures
        if first is None:
            first = getattr(module, "MEASURE", None)
    return [first] if first is not None else []


def task_figures(task: str) -> tuple[dict[str, Callable[[pd.DataFrame, Axes], None]], MeasureSpec | None]:
    """FIGURES and the default MEASURE of a task: from tasks.<task>, else harness.report_<task>, else ({}, None)."""
    figures = None
    for module in _task_modules(task):
        figures = getattr(module, "FIGURES", None)
        if figures is not None:
            break
    measures = task_measures(task)
    return dict(figures or {}), (measures[0] if measures else None)
