"""Report figures of the perplexity task: ppl@L and per-position loss, with the law on every curve.

The task's two measured-length definitions (ppl@L, the default, and the per-position loss) live in
tasks/perplexity.py. Each figure function takes the task's FigureContext (everything precomputed by the
analysis step) and one matplotlib Axes; the first paragraph of its docstring is its caption.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.report.base import NoData
from harness.report.plots import (
    finish_legend,
    format_length_axis,
    law_legend_handles,
    law_overlay,
    mark_measured,
    plot_measured_vs_predicted,
    plot_metric_curves,
    style_axes,
)
from harness.report.tables import PositionCurves
from tasks.perplexity import MEASURE, POSITION_LOSS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import FigureContext

TABLES = {"position_curves": PositionCurves()}


def ppl_vs_length(ctx: FigureContext, ax: Axes) -> None:
    """ppl@L vs context length per setting (band: bootstrap CI over samples); dotted: training length, dashed:
    the law's predicted limit, circle: measured length."""
    view = ctx.default
    plot_metric_curves(ax, ctx, view, ylabel="perplexity  ppl@L")
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    finish_legend(ax, law_legend_handles())


def loss_vs_position(ctx: FigureContext, ax: Axes) -> None:
    """Per-position loss (mean NLL in position buckets, longest pass, all samples) vs token position; same law
    overlay; circle: measured length (smoothed loss > its reference + delta, default 0.5 nats)."""
    if ctx.positions is None or not len(ctx.positions):
        raise NoData("no positions*.jsonl in these runs")
    curves = ctx.tables["position_curves"]
    if not len(curves):
        raise NoData("no per-position values")
    curves = curves[curves["x"] > 0]  # a log axis
    for setting in ctx.order:
        rows = curves[curves["setting"] == setting].sort_values("x")
        if len(rows):
            ax.plot(rows["x"], rows["nll"], color=ctx.colors[setting], linewidth=1.3, label=setting, zorder=3)
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (nats / token)")
    format_length_axis(ax)
    finite = curves["nll"][np.isfinite(curves["nll"])]
    if len(finite):
        top = float(np.percentile(finite, 99.5))
        low, span = float(finite.min()), top - finite.min()
        ax.set_ylim(max(0.0, low - 0.1 * span), top + 0.08 * span)
    style_axes(ax)
    law_overlay(ax, ctx, ctx.default)
    measured = POSITION_LOSS.key in ctx.analyses
    if measured:
        mark_measured(ax, ctx, ctx.measure(POSITION_LOSS.key))
    finish_legend(ax, law_legend_handles(measured=measured))


def measured_vs_predicted(ctx: FigureContext, ax: Axes) -> None:
    """Measured extrapolation length (ppl@L rule: ppl@L within a factor, default 1.5, of its best at L <=
    tune_len; bootstrap CI) vs the law's predicted limit; open markers with arrows are censored (never failed
    within the grid)."""
    plot_measured_vs_predicted(ax, ctx, ctx.measure(MEASURE.key))


def measured_vs_predicted_position_loss(ctx: FigureContext, ax: Axes) -> None:
    """Measured extrapolation length (per-position rule: first position past tune_len where the smoothed loss
    exceeds its reference + delta, default 0.5 nats; bootstrap CI) vs the law's predicted limit; same axes as
    the ppl@L figure."""
    plot_measured_vs_predicted(ax, ctx, ctx.measure(POSITION_LOSS.key))


FIGURES = {
    "ppl_vs_length": ppl_vs_length,
    "loss_vs_position": loss_vs_position,
    "measured_vs_predicted": measured_vs_predicted,
    "measured_vs_predicted_position_loss": measured_vs_predicted_position_loss,
}
