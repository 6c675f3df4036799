"""Shared plotting for the report's task figures: axes formatting, the metric curves, legends, panels.

Every figure function of a task (harness/report/figures/<task>.py) draws on one Axes with these helpers, so
all figures share axes formatting and colours; the law overlay lives in overlay.py, the measured-vs-predicted
and limit-vs-base figures in mvp.py and basefig.py. Helpers take the task's FigureContext (order, colours)
and the Analysis of the definition they draw; they compute nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.report.base import NoData, fmt_length

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import Analysis, FigureContext


def format_length_axis(ax: Axes, axis: str = "x") -> None:
    """log2 axis with 1K/4K/128K tick labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=2)
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    octaves = max(1.0, math.log2(max(hi, 2) / max(lo, 1)))
    step = max(1, math.ceil(octaves / 9))
    target.set_major_locator(LogLocator(base=2 ** step, numticks=20))
    target.set_major_formatter(FuncFormatter(lambda v, _: fmt_length(v)))
    target.set_minor_formatter(NullFormatter())


def format_value_axis(ax: Axes, log: bool = True) -> None:
    """Plain numbers on a log value axis (3, 5, 10, 20, 50 ...)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not log:
        return
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    subs = (1.0, 2.0, 5.0) if hi / max(lo, 1e-12) < 1e3 else (1.0,)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def style_axes(ax: Axes) -> None:
    ax.grid(True, which="major", color="0.88", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)


# Marker shapes per setting where curves may coincide (bounded metrics such as accuracy).
CURVE_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")


def plot_metric_curves(ax: Axes, ctx: FigureContext, analysis: Analysis, ylabel: str | None = None,
                       log_y: bool = True, ci: bool = True, spread: float = 0.0) -> bool:
    """One aggregate curve per setting (markers at grid points, CI band) from analysis.table; returns
    whether a CI band was drawn (there is none with fewer than two samples).

    `spread` > 0 (bounded metrics whose curves often coincide, e.g. accuracy 0 everywhere): setting k of n is
    drawn shifted by (k - (n - 1) / 2) x spread in y, with its own marker shape, so every curve stays visible.
    """
    table = analysis.table[np.isfinite(analysis.table["mean"].astype(float))]
    if not len(table):
        raise NoData(f"no ok {analysis.spec.name} values")
    drawn = [s for s in ctx.order if (table["setting"] == s).any()]
    banded = False
    for k, setting in enumerate(drawn):
        rows = table[table["setting"] == setting].sort_values("length")
        shift = (k - (len(drawn) - 1) / 2) * spread
        color = ctx.colors[setting]
        marker = CURVE_MARKERS[k % len(CURVE_MARKERS)] if spread else "o"
        ax.plot(rows["length"], rows["mean"] + shift, marker=marker, markersize=4 if spread else 3.5,
                linewidth=1.5, color=color, label=setting, zorder=3, gid=f"curve:{setting}")
        band = rows[np.isfinite(rows["ci_low"].astype(float))]
        if ci and len(band):
            banded = True
            ax.fill_between(band["length"], band["ci_low"] + shift, band["ci_high"] + shift, color=color,
                            alpha=0.15, linewidth=0, zorder=2)
    ax.set_xlabel("context length L (tokens)")
    ax.set_ylabel(ylabel or analysis.spec.name)
    format_length_axis(ax)
    format_value_axis(ax, log_y)
    style_axes(ax)
    return banded


def band_caption(banded: bool, ctx: FigureContext) -> str:
    """The caption's sentence on CI bands: what the band is, or why there is none."""
    if banded:
        return f"Bands: {100 * ctx.ci:g}% bootstrap CI over samples."
    return "No CI band: fewer than two samples per setting."


class Handles(tuple):
    """Several legend handles drawn side by side as one entry (e.g. a large and a small marker), with its
    label."""

    label: str = ""

    def get_label(self) -> str:
        return self.label


def handles(*items: Any, label: str) -> Handles:
    entry = Handles(items)
    entry.label = label
    return entry


def ci_handle(ci: float) -> Any:
    """A legend entry for the CI bars of measured points: a bar with caps, as drawn."""
    from matplotlib.collections import LineCollection
    from matplotlib.container import ErrorbarContainer
    from matplotlib.lines import Line2D

    cap = Line2D([], [], color="0.3", marker="_", markersize=6, linestyle="none")
    return ErrorbarContainer((None, (cap, cap), (LineCollection([], colors="0.3", linewidths=1.2),)),
                             has_xerr=False, has_yerr=True, label=f"{100 * ci:g}% CI over samples")


def finish_legend(ax: Axes, extra: Sequence[Any] = (), title: str | None = None) -> None:
    """Setting curves + `extra` handles in one compact legend right of the axes (a `Handles` entry shows its
    handles side by side)."""
    from matplotlib.legend_handler import HandlerTuple

    found, labels = ax.get_legend_handles_labels()
    found = list(found) + list(extra)
    labels = list(labels) + [h.get_label() for h in extra]
    ax.legend(found, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=7.5,
              title=title, title_fontsize=8, handlelength=2.2, borderaxespad=0.0,
              handler_map={Handles: HandlerTuple(ndivide=None, pad=0.6)})


def split_panels(ax: Axes, n: int, width: float = 3.3, height: float = 2.6) -> list[Axes]:
    """`n` panels in the slot of `ax` (which is replaced when n > 1); the figure grows to fit them."""
    if n == 1:
        return [ax]
    fig = ax.figure
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    w, h = fig.get_size_inches()
    fig.set_size_inches(max(w, width * cols + 1.0), max(h, height * rows + 0.3))
    grid = ax.get_subplotspec().subgridspec(rows, cols, wspace=0.35, hspace=0.55)
    ax.remove()
    return [fig.add_subplot(grid[i // cols, i % cols]) for i in range(n)]
