"""Report figures of the long-document QA task: score per length and per dataset, with the law overlay.

The task's measured-length definition lives in tasks/longqa.py; the synthetic QA's teacher-forced answer
log-prob (tasks.longqa.LOGPROB) is drawn too, as an EXTRA_MEASURE: analysed with the run's bootstrap
settings but left out of summary.csv. Each figure function takes the task's FigureContext and one
matplotlib Axes; the first paragraph of its docstring is the caption.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.report.base import NoData
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
from harness.report.tables import Breakdown, LawVsBase
from tasks.longqa import LOGPROB, MEASURE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import FigureContext

EXTRA_MEASURES = (LOGPROB,)
TABLES = {"score_by_dataset": Breakdown("score", ("dataset",)),  # mean per setting, dataset and length
          "answer_in_context": Breakdown("answer_in_context"),  # share per setting and length
          LAW_VS_BASE: LawVsBase()}


def score_vs_length(ctx: FigureContext, ax: Axes) -> str:
    """QA score (mean over questions) vs context length per setting; dotted: training length, dashed /
    triangle: Liu's predicted limit, dash-dot / diamond: the retrieval bound; circle: measured length
    (score >= best / 2)."""
    view = ctx.measure(MEASURE.key)
    banded = plot_metric_curves(ax, ctx, view, ylabel="QA score (mean over questions)", log_y=False)
    ax.set_ylim(-0.03, 1.03)
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    finish_legend(ax, law_legend_handles(ax))
    return band_caption(banded, ctx)


def answer_logprob_vs_length(ctx: FigureContext, ax: Axes) -> str:
    """Synthetic QA: teacher-forced answer log-prob (mean over questions) vs context length; same overlay of
    both limits."""
    records = ctx.records
    if "answer_logprob" not in records or not records["answer_logprob"].notna().any():
        raise NoData("no answer_logprob values (LongBench-format runs have none)")
    view = ctx.measure(LOGPROB.key)
    banded = plot_metric_curves(ax, ctx, view, ylabel="answer log-prob (nats)", log_y=False)
    law_overlay(ax, ctx, view)
    finish_legend(ax, law_legend_handles(ax))
    return band_caption(banded, ctx)


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def score_by_dataset(ctx: FigureContext, ax: Axes) -> None:
    """QA score per dataset vs context length: colour = setting, line style and marker = dataset; same overlay
    of both limits."""
    from matplotlib.lines import Line2D

    table = ctx.tables["score_by_dataset"]
    if not len(table):
        raise NoData("no ok QA scores")
    names = sorted(table["dataset"].unique())
    if len(names) < 2:
        raise NoData("a single dataset: see the QA score figure")
    for setting in ctx.order:
        for k, name in enumerate(names):
            rows = table[(table["setting"] == setting) & (table["dataset"] == name)].sort_values("length")
            if len(rows):
                ax.plot(rows["length"], rows["mean"], color=ctx.colors[setting],
                        linestyle=_STYLES[k % len(_STYLES)], marker=_MARKERS[k % len(_MARKERS)],
                        markersize=3.5, linewidth=1.2, zorder=3)
    ax.set_xlabel("context length L (tokens)")
    ax.set_ylabel("QA score (mean over questions)")
    ax.set_ylim(-0.03, 1.03)
    format_length_axis(ax)
    style_axes(ax)
    law_overlay(ax, ctx, ctx.measure(MEASURE.key))
    shown = set(table["setting"])
    handles = [Line2D([], [], color=ctx.colors[s], linewidth=1.5, label=s) for s in ctx.order if s in shown]
    handles += [Line2D([], [], color="0.3", linestyle=_STYLES[k % len(_STYLES)],
                       marker=_MARKERS[k % len(_MARKERS)], markersize=4, label=name)
                for k, name in enumerate(names)]
    finish_legend(ax, handles + law_legend_handles(ax))


def answer_in_context_vs_length(ctx: FigureContext, ax: Axes) -> None:
    """Share of questions whose answer survived the middle truncation vs context length (LongBench sources); a
    falling score where this stays high is the model, not the cut."""
    records = ctx.records
    if "truncated_tokens" not in records or not (records["truncated_tokens"].fillna(0) > 0).any():
        raise NoData("no context was truncated")
    share = ctx.tables["answer_in_context"]
    if not len(share):
        raise NoData("no answer_in_context values")
    for setting in ctx.order:
        rows = share[share["setting"] == setting].sort_values("length")
        if len(rows):
            ax.plot(rows["length"], rows["mean"], color=ctx.colors[setting], marker="o", markersize=3.5,
                    linewidth=1.3, label=setting, zorder=3)
    ax.set_xlabel("context length L (tokens)")
    ax.set_ylabel("answer in the kept context (share)")
    ax.set_ylim(-0.03, 1.03)
    format_length_axis(ax)
    style_axes(ax)
    finish_legend(ax)


def measured_vs_predicted(ctx: FigureContext, ax: Axes) -> None:
    """Measured extrapolation length (QA score >= best / 2, bootstrap CI) vs the law's predicted limit; open
    markers with arrows are censored (never failed within the grid)."""
    plot_measured_vs_predicted(ax, ctx, ctx.measure(MEASURE.key))


def limit_vs_base(ctx: FigureContext, ax: Axes) -> None:
    """QA extrapolation length (score >= best / 2) vs RoPE base for the settings sharing rotary_dim,
    pretrain_base, train_len and tune_len: Liu's law (solid, shaded where it gives no upper bound), the
    retrieval bound (dash-dot), T_train / T_tune (horizontal), measured lengths with CIs (open: censored)."""
    plot_limit_vs_base(ax, ctx, ctx.measure(MEASURE.key))


FIGURES = {
    "score_vs_length": score_vs_length,
    "answer_logprob_vs_length": answer_logprob_vs_length,
    "score_by_dataset": score_by_dataset,
    "answer_in_context_vs_length": answer_in_context_vs_length,
    "measured_vs_predicted": measured_vs_predicted,
    "limit_vs_base": limit_vs_base,
}
