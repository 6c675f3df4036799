"""Report figures of the perplexity task: ppl@L, per-position loss and ppl_sliding@L, with both limits on
every curve, measured vs predicted, and the extrapolation length against the base.

The task's measured-length definitions (ppl@L, the default, and the per-position loss) live in
tasks/perplexity; ppl_sliding@L (records of --sliding-stride) is drawn here as an EXTRA_MEASURE (analysed,
in table.csv, not in summary.csv), from the derived column sliding_nll = log(ppl_sliding). Each figure
function takes the task's FigureContext (everything precomputed by the analysis step) and one matplotlib
Axes; the first paragraph of its docstring is its caption.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.core.metrics import MeasureSpec
from harness.report.base import NoData, NotApplicable
from harness.report.basefig import TABLE as LAW_VS_BASE
from harness.report.basefig import plot_limit_vs_base
from harness.report.mvp import plot_measured_vs_predicted
from harness.report.overlay import law_legend_handles, law_overlay, mark_measured
from harness.report.plots import (
    band_caption,
    finish_legend,
    format_length_axis,
    plot_metric_curves,
    style_axes,
)
from harness.report.tables import LawVsBase, PositionCurves
from tasks.perplexity import KEY_MEASURE, MEASURE, POSITION_LOSS

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import FigureContext

TABLES = {"position_curves": PositionCurves(), LAW_VS_BASE: LawVsBase()}

SLIDING = MeasureSpec(
    metric="sliding_nll", name="ppl_sliding@L", id="ppl_sliding@L", transform="exp", factor=1.5,
    reference="tune_len", log_interp=True,
    description="Press / HF sliding-window perplexity (window L, stride S = the run's --sliding-stride), "
                "token-weighted within a sample; over samples exp(mean of the per-sample log ppl_sliding)")
EXTRA_MEASURES = (SLIDING,)


def _sliding_nll(records):
    """log(ppl_sliding) per record (None without --sliding-stride records)."""
    import pandas as pd

    if "ppl_sliding" not in records:
        return None
    return np.log(pd.to_numeric(records["ppl_sliding"], errors="coerce"))


COLUMNS = {"sliding_nll": _sliding_nll}


def ppl_vs_length(ctx: FigureContext, ax: Axes) -> str:
    """ppl@L vs context length per setting; dotted: training length, dashed with a triangle above the top
    edge: Liu's predicted limit, dash-dot with a diamond: the retrieval bound (Men et al.); one marker per
    setting above the top edge, stacked where limits coincide; circle: measured length."""
    view = ctx.default
    banded = plot_metric_curves(ax, ctx, view, ylabel="perplexity  ppl@L")
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    finish_legend(ax, law_legend_handles(ax))
    return band_caption(banded, ctx)


def loss_vs_position(ctx: FigureContext, ax: Axes) -> None:
    """Per-position loss (mean NLL in position buckets, longest pass, all samples) vs token position; same
    overlay of both limits (Liu dashed, retrieval bound dash-dot); circle: measured length (smoothed loss >
    its reference + delta, default 0.5 nats)."""
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
    if POSITION_LOSS.key in ctx.analyses:
        mark_measured(ax, ctx, ctx.measure(POSITION_LOSS.key))
    finish_legend(ax, law_legend_handles(ax))


def measured_vs_predicted(ctx: FigureContext, ax: Axes) -> None:
    """Measured extrapolation length (ppl@L rule: ppl@L within a factor, default 1.5, of its best at L <=
    tune_len; bootstrap CI) vs the law's predicted limit; open markers with arrows are censored (never failed
    within the grid); points sharing a predicted value are spread a few percent apart in x."""
    plot_measured_vs_predicted(ax, ctx, ctx.measure(MEASURE.key))


def measured_vs_predicted_position_loss(ctx: FigureContext, ax: Axes) -> None:
    """Measured extrapolation length (per-position rule: first position past tune_len where the smoothed loss
    exceeds its reference + delta, default 0.5 nats; bootstrap CI) vs the law's predicted limit; same axes as
    the ppl@L figure."""
    plot_measured_vs_predicted(ax, ctx, ctx.measure(POSITION_LOSS.key))


def ppl_sliding_vs_length(ctx: FigureContext, ax: Axes) -> str:
    """ppl_sliding@L (Press / HF sliding window: window L, stride S) vs context length per setting; same
    overlay of both limits; circle: where ppl_sliding@L exceeds 1.5 x its best at L <= tune_len."""
    view = ctx.extras.get(SLIDING.key)
    if view is None or not view.table["mean"].notna().any():
        raise NotApplicable("no ppl_sliding records (run with --sliding-stride)")
    banded = plot_metric_curves(ax, ctx, view, ylabel="perplexity  ppl_sliding@L")
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    finish_legend(ax, law_legend_handles(ax))
    strides = sorted({int(s) for s in ctx.records.get("sliding_stride", []) if s == s and s is not None})
    shown = f"Stride S = {', '.join(map(str, strides))} tokens." if strides else ""
    return " ".join(t for t in (shown, band_caption(banded, ctx)) if t)


def limit_vs_base(ctx: FigureContext, ax: Axes) -> None:
    """Extrapolation length vs RoPE base for the settings sharing rotary_dim, pretrain_base, train_len and
    tune_len: Liu's law (solid; T_tune from beta3 to beta0, the jump at beta0, 2 pi beta^(d_extra/d) above;
    shaded: below beta3 = T_tune / 2 pi, no upper bound), the retrieval bound (dash-dot), T_train / T_tune
    (horizontal), and the measured ppl@L length per setting with its CI (open with an arrow: censored)."""
    plot_limit_vs_base(ax, ctx, ctx.measure(MEASURE.key))


def limit_vs_base_position_loss(ctx: FigureContext, ax: Axes) -> None:
    """The same extrapolation-vs-base figure with the per-position measured length (first position past
    tune_len where the smoothed loss exceeds its reference + 0.5 nats)."""
    if POSITION_LOSS.key not in ctx.analyses:
        raise NotApplicable("no per-position measured length (see the loss figure's note)")
    plot_limit_vs_base(ax, ctx, ctx.measure(POSITION_LOSS.key))


FIGURES = {  # the first is the one a report shows open: the per-position loss is the law's test
    "loss_vs_position": loss_vs_position,
    "ppl_vs_length": ppl_vs_length,
    "measured_vs_predicted": measured_vs_predicted,
    "measured_vs_predicted_position_loss": measured_vs_predicted_position_loss,
    "limit_vs_base": limit_vs_base,
    "limit_vs_base_position_loss": limit_vs_base_position_loss,
    "ppl_sliding_vs_length": ppl_sliding_vs_length,
}


def ppl_key_vs_length(ctx: FigureContext, ax: Axes) -> str:
    """ppl_key@L (LongPPL: perplexity over the key tokens, those an evaluator predicts far better with the
    full context than with only the K preceding tokens) vs context length per setting, solid; ppl@L of the
    same setting faded beside it; same overlay of both limits; circle: where ppl_key@L exceeds 1.5 x its best
    at L <= tune_len."""
    from matplotlib.lines import Line2D

    if KEY_MEASURE.key not in ctx.analyses:
        raise NotApplicable("no ppl_key records (run with --key-tokens)")
    view = ctx.measure(KEY_MEASURE.key)
    plain = ctx.default.table[np.isfinite(ctx.default.table["mean"].astype(float))]
    for setting in ctx.order:  # drawn first: the key curves and the overlay sit on top
        rows = plain[plain["setting"] == setting].sort_values("length")
        if len(rows):
            ax.plot(rows["length"], rows["mean"], color=ctx.colors[setting], linewidth=1.0, alpha=0.35,
                    marker="o", markersize=2.5, zorder=2, label="_nolegend_", gid=f"ppl:{setting}")
    banded = plot_metric_curves(ax, ctx, view, ylabel="perplexity  ppl_key@L (faded: ppl@L)")
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    faded = Line2D([], [], color="0.3", linewidth=1.0, alpha=0.35, marker="o", markersize=2.5,
                   label="ppl@L (faded)")
    finish_legend(ax, [faded, *law_legend_handles(ax)])
    keyed = ctx.records[ctx.records["nll_key"].notna()]
    params = sorted({f"{r.key_evaluator} (K {int(r.key_context)}, alpha {r.key_alpha:g}, "
                     f"beta {r.key_beta:g})" for r in keyed.itertuples()}) if "key_evaluator" in keyed else []
    shown = f"Key tokens chosen by {'; '.join(params)}." if params else ""
    return " ".join(t for t in (shown, band_caption(banded, ctx)) if t)


FIGURES["ppl_key_vs_length"] = ppl_key_vs_length  # its entry: defined after FIGURES, at the end
