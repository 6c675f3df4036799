"""The report wing's floor: what every report module may import without an import circle.

Pandas-free, so that `rope-harness --help` can show the report's defaults without loading the analysis.
"""

DEFAULT_BOOTSTRAP = 1000
DEFAULT_CI = 0.95


class NoData(Exception):
    """Raised by a figure function with nothing to draw; the report skips the figure and says why."""
