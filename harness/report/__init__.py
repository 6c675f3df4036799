"""The reporting layer: run folders -> figures and tables, both RoPE limits drawn on every curve.

Steps, each a module of this package, importing only downward: `load` (records*.jsonl, positions*.jsonl and
run.json of every run) -> `analysis` (per task: every measured-length definition's per-length table, the
law block of each setting from `lawblock` (Liu's limit, the retrieval bound, d_measured), warnings from
`checks`, bootstrap CIs via `curves`, and the extra tables its figures draw, `tables`) -> the task's figure
functions (`figures/<task>.py`, found by `registry`, drawn with `plots`, `overlay` (both limits on a length
axis), `mvp` (measured vs predicted) and `basefig` (length vs base)) -> the page's blocks (`page`) ->
report.md and a self-contained report.html (`render`); `build.build_report` runs them in this order. The
page opens with one verdict per model family (`verdict`, read off `headline`) and the first family's most
telling figure; `families` holds the model families, the setting order and the colours.

This file stays import-light (no pandas) so that the CLI can build its parser without the analysis;
`build_report` and `command` are loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "command", "console_answer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from harness.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'harness.report' has no attribute {name!r}")
