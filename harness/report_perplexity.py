"""Report figures of the perplexity task and its measured-extrapolation-length rule.

`tasks/perplexity.py` re-exports these (`from harness.report_perplexity import FIGURES, MEASURE`); the
report also finds them here directly, MEASURES included (two definitions of the measured length: ppl@L, the
default, and the per-position loss). Each figure function takes the task's records frame (all runs; the
report attaches its precomputed context and the per-position frame in `df.attrs`) and a matplotlib Axes.
The first line of a figure function's docstring is its caption in the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness.analysis import figure_context
from harness.measure import MeasureSpec, PositionMeasureSpec
from harness.plots import (
    NoData,
    finish_legend,
    format_length_axis,
    law_legend_handles,
    law_overlay,
    mark_measured,
    plot_measured_vs_predicted,
    plot_metric_curves,
    style_axes,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MEASURE = MeasureSpec(
    metric="nll",
    name="ppl@L",
    transform="exp",
    factor=1.5,
    reference="tune_len",
    log_interp=True,
    description="the model sees exactly L tokens (BOS + the sample's first L-1); ppl@L = exp(mean over samples "
                "of the per-sample mean NLL over the L-1 predictions)",
    id="ppl@L",
)

# ppl@L averages every position up to L, so it crosses any threshold well after the per-token loss has
# jumped (on the zoo's 256-token models by ~2x). This rule reads the jump off the per-position curve.
# delta = 0.5 nats (a per-token perplexity x1.65): on the zoo (12 samples, 64-token buckets) the smoothed mean
# curve strays at most ~0.25 nats from its [T/2, T] reference in distribution, while RoPE cliffs rise by
# 1.5-2 nats; with one or two samples the curve is noisier (one sample's smoothed loss strays ~0.4 nats).
POSITION_LOSS = PositionMeasureSpec(
    metric="nll",
    name="per-position loss",
    id="position-loss",
    delta=0.5,
    window=3,
    reference="tune_len",
    reference_from=0.5,
    description="mean NLL (nats) of the predictions in each position bucket of the longest pass (positions.jsonl), "
                "token-weighted over samples: the loss at a token position, not averaged up to it",
)

MEASURES = [MEASURE, POSITION_LOSS]


def ppl_vs_length(df: pd.DataFrame, ax: Axes) -> None:
    """ppl@L vs context length per setting (band: bootstrap CI over samples); dotted: training length, dashed: the law's predicted limit, circle: measured length."""
    ctx = figure_context(df, MEASURES)
    plot_metric_curves(ax, ctx, ylabel="perplexity  ppl@L")
    law_overlay(ax, ctx)
    mark_measured(ax, ctx)
    finish_legend(ax, law_legend_handles())


def position_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting, the longest pass's per-position NLL, token-weighted over samples: setting, x, nll."""
    ctx = figure_context(df, MEASURES)
    pos = ctx.positions
    if pos is None or not len(pos):
        raise NoData("no positions*.jsonl in these runs")
    pos = pos[pos["nll"].notna() & pos["tokens"].fillna(0).gt(0)]
    if not len(pos):
        raise NoData("no per-position values")
    longest = pos.groupby("setting")["length"].transform("max")
    pos = pos[pos["length"] == longest]
    weighted = pos.assign(w_nll=pos["nll"] * pos["tokens"])
    agg = weighted.groupby(["setting", "pos_start", "pos_end"], as_index=False)[["w_nll", "tokens"]].sum()
    agg["nll"] = agg["w_nll"] / agg["tokens"]
    agg["x"] = (agg["pos_start"] + agg["pos_end"] - 1) / 2.0
    return agg[agg["x"] > 0][["setting", "pos_start", "pos_end", "x", "nll", "tokens"]]


def loss_vs_position(df: pd.DataFrame, ax: Axes) -> None:
    """Per-position loss (mean NLL in position buckets, longest pass, all samples) vs token position; same law overlay; circle: measured length (smoothed loss > its reference + delta, default 0.5 nats)."""
    ctx = figure_context(df, MEASURES)
    curves = position_curves(df)
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
        ax.set_ylim(max(0.0, float(finite.min()) - 0.1 * (top - finite.min())), top + 0.08 * (top - finite.min()))
    style_axes(ax)
    law_overlay(ax, ctx)
    measured = POSITION_LOSS.key in ctx.views
    if measured:
        mark_measured(ax, ctx.measure(POSITION_LOSS.key))
    finish_legend(ax, law_legend_handles(measured=measured))


def measured_vs_predicted(df: pd.DataFrame, ax: Axes) -> None:
    """Measured extrapolation length (ppl@L rule: ppl@L within a factor, default 1.5, of its best at L <= tune_len; bootstrap CI) vs the law's predicted limit; open markers with arrows are censored (never failed within the grid)."""
    plot_measured_vs_predicted(ax, figure_context(df, MEASURES).measure(MEASURE.key))


def measured_vs_predicted_position_loss(df: pd.DataFrame, ax: Axes) -> None:
    """Measured extrapolation length (per-position rule: first position past tune_len where the smoothed loss exceeds its reference + delta, default 0.5 nats; bootstrap CI) vs the law's predicted limit; same axes as the ppl@L figure."""
    plot_measured_vs_predicted(ax, figure_context(df, MEASURES).measure(POSITION_LOSS.key))


FIGURES = {
    "ppl_vs_length": ppl_vs_length,
    "loss_vs_position": loss_vs_position,
    "measured_vs_predicted": measured_vs_predicted,
    "measured_vs_predicted_position_loss": measured_vs_predicted_position_loss,
}

__all__ = ["FIGURES", "MEASURE", "MEASURES", "POSITION_LOSS", "loss_vs_position", "measured_vs_predicted",
           "measured_vs_predicted_position_loss", "position_curves", "ppl_vs_length"]
