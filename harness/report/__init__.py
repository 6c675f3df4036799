"""The reporting layer: run folders -> figures and tables, the law drawn on every curve.

Steps, each a module of this package, importing only downward: `load` (records*.jsonl and positions*.jsonl
of every run, one frame each) -> `analysis` (per task: every measured-length definition's per-length table,
measured vs predicted limit per setting, and the extra tables its figures draw from; bootstrap CIs via
`curves`) -> the task's figure functions (`figures/<task>.py`, found by `registry`, drawn with `plots`) ->
report.md and a self-contained report.html (`render`); `build.build_report` runs them in this order.

This file stays import-light (no pandas) so that the CLI can build its parser without the analysis;
`build_report` and `command` are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "command"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from harness.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'harness.report' has no attribute {name!r}")
