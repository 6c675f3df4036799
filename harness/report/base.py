"""The report's shared defaults, figure exceptions and length format: the floor every report module may
import without an import circle.

Pandas-free, so that `rope-harness --help` can show the report's defaults without loading the analysis.
"""

from __future__ import annotations

import math
from typing import Any

from harness.core.metrics import EVIDENCE_SAMPLES as DEFAULT_MIN_SAMPLES  # noqa: F401 - the one evidence bar
from harness.core.values import fmt_base  # noqa: F401 - one base format for the report and the zoo list

DEFAULT_BOOTSTRAP = 1000
DEFAULT_CI = 0.95


class NoData(Exception):
    """Raised by a figure function with nothing to draw; the report skips the figure and says why."""


class NotApplicable(NoData):
    """Raised by a figure function that does not apply to these runs (e.g. ppl_sliding without
    --sliding-stride records): the report skips it without a note."""


def fmt_length(x: float) -> str:
    """4096 -> '4K', 131072 -> '128K', 1500 -> '1.5K', 300 -> '300'."""
    x = float(x)
    if not math.isfinite(x):
        return ""
    if x >= 1024 * 1024 and (x / 1024**2) * 10 % 1 == 0:
        return f"{x / 1024**2:g}M"
    if x >= 1024 and (x / 1024) * 10 % 1 == 0:
        return f"{x / 1024:g}K"
    if x >= 1000:
        return f"{x / 1000:.3g}k"
    return f"{x:.3g}"


def score_threshold(value: float) -> float:
    """`report --threshold` on either scale, unambiguously: a value above 1 is a percentage (RULER's 85.6 ->
    0.856), one in (0, 1] a fraction of the 0-1 score (0.856). ValueError outside (0, 100]."""
    value = float(value)
    if not (math.isfinite(value) and 0 < value <= 100):
        raise ValueError(f"threshold {value:g} outside (0, 100]")
    return value / 100 if value > 1 else value


def finite_number(value: Any) -> float:
    """A table cell as a float: NaN when missing, not a number, or infinite."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan
