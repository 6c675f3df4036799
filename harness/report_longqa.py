"""Report figures of the long-document QA task and its measured-extrapolation-length rule.

`tasks/longqa.py` re-exports these (`from harness.report_longqa import FIGURES, MEASURE`). Each figure
function takes the task's records frame (the report attaches its precomputed context in `df.attrs`) and a
matplotlib Axes; the first line of its docstring is the caption.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from harness.analysis import analyze, figure_context
from harness.measure import MeasureSpec
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
    metric="score",
    name="QA score",
    higher_is_better=True,
    factor=2.0,
    reference="tune_len",
    log_interp=False,
    description="per question and length, the dataset's headline metric in [0, 1] (token F1 for QA, ROUGE-L for "
                "summaries, first-integer match for the synthetic QA) of the greedy answer to a prompt of exactly L "
                "tokens (context cut in the middle or padded); mean over questions",
)

# The synthetic QA's teacher-forced score; an absolute rule (answer probability >= 1/2) so that it is
# defined for log-probs (a relative factor makes no sense for negative numbers).
LOGPROB = MeasureSpec(
    metric="answer_logprob",
    name="answer log-prob",
    higher_is_better=True,
    factor=None,
    threshold=math.log(0.5),
    reference="tune_len",
    log_interp=False,
    description="sum of the log-probs of the answer tokens, teacher-forced after the prompt (synthetic QA)",
)


def score_vs_length(df: pd.DataFrame, ax: Axes) -> None:
    """QA score (mean over questions; band: bootstrap CI) vs context length per setting; dotted: training length, dashed: the law's predicted limit, circle: measured length (score >= best / 2)."""
    ctx = figure_context(df, MEASURE)
    plot_metric_curves(ax, ctx, ylabel="QA score (mean over questions)", log_y=False)
    ax.set_ylim(-0.03, 1.03)
    law_overlay(ax, ctx)
    mark_measured(ax, ctx)
    finish_legend(ax, law_legend_handles())


def answer_logprob_vs_length(df: pd.DataFrame, ax: Axes) -> None:
    """Synthetic QA: teacher-forced answer log-prob (mean over questions) vs context length; same law overlay."""
    base = figure_context(df, MEASURE)
    records = base.records
    if "answer_logprob" not in records or not records["answer_logprob"].notna().any():
        raise NoData("no answer_logprob values (LongBench-format runs have none)")
    ctx = analyze(records, LOGPROB, task=base.task, n_boot=200, colors=base.colors)
    plot_metric_curves(ax, ctx, ylabel="answer log-prob (nats)", log_y=False)
    law_overlay(ax, ctx)
    finish_legend(ax, law_legend_handles(measured=False))


def per_dataset(df: pd.DataFrame) -> pd.DataFrame:
    """Mean score per setting, dataset and length of the ok records: setting, dataset, length, score, n."""
    ok = df[(df["status"] == "ok") & df["score"].notna()] if "score" in df else df.iloc[0:0]
    if not len(ok) or "dataset" not in ok:
        raise NoData("no ok QA scores")
    return ok.groupby(["setting", "dataset", "length"], as_index=False).agg(
        score=("score", "mean"), n=("score", "size"))


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def score_by_dataset(df: pd.DataFrame, ax: Axes) -> None:
    """QA score per dataset vs context length: colour = setting, line style and marker = dataset; same law overlay."""
    from matplotlib.lines import Line2D

    ctx = figure_context(df, MEASURE)
    table = per_dataset(ctx.records)
    names = sorted(table["dataset"].unique())
    if len(names) < 2:
        raise NoData("a single dataset: see the QA score figure")
    for setting in ctx.order:
        for k, name in enumerate(names):
            rows = table[(table["setting"] == setting) & (table["dataset"] == name)].sort_values("length")
            if len(rows):
                ax.plot(rows["length"], rows["score"], color=ctx.colors[setting], linestyle=_STYLES[k % len(_STYLES)],
                        marker=_MARKERS[k % len(_MARKERS)], markersize=3.5, linewidth=1.2, zorder=3)
    ax.set_xlabel("context length L (tokens)")
    ax.set_ylabel("QA score (mean over questions)")
    ax.set_ylim(-0.03, 1.03)
    format_length_axis(ax)
    style_axes(ax)
    law_overlay(ax, ctx)
    handles = [Line2D([], [], color=ctx.colors[s], linewidth=1.5, label=s) for s in ctx.order]
    handles += [Line2D([], [], color="0.3", linestyle=_STYLES[k % len(_STYLES)], marker=_MARKERS[k % len(_MARKERS)],
                       markersize=4, label=name) for k, name in enumerate(names)]
    finish_legend(ax, handles + law_legend_handles(measured=False))


def answer_in_context_vs_length(df: pd.DataFrame, ax: Axes) -> None:
    """Share of questions whose answer survived the middle truncation vs context length (LongBench sources); a falling score where this stays high is the model, not the cut."""
    ctx = figure_context(df, MEASURE)
    records = ctx.records
    if "truncated_tokens" not in records or not (records["truncated_tokens"].fillna(0) > 0).any():
        raise NoData("no context was truncated")
    ok = records[(records["status"] == "ok") & records["answer_in_context"].notna()]
    if not len(ok):
        raise NoData("no answer_in_context values")
    share = ok.assign(hit=ok["answer_in_context"].astype(float)).groupby(["setting", "length"], as_index=False)["hit"].mean()
    for setting in ctx.order:
        rows = share[share["setting"] == setting].sort_values("length")
        if len(rows):
            ax.plot(rows["length"], rows["hit"], color=ctx.colors[setting], marker="o", markersize=3.5,
                    linewidth=1.3, label=setting, zorder=3)
    ax.set_xlabel("context length L (tokens)")
    ax.set_ylabel("answer in the kept context (share)")
    ax.set_ylim(-0.03, 1.03)
    format_length_axis(ax)
    style_axes(ax)
    finish_legend(ax)


def measured_vs_predicted(df: pd.DataFrame, ax: Axes) -> None:
    """Measured extrapolation length (QA score >= best / 2, bootstrap CI) vs the law's predicted limit; open markers with arrows are censored (never failed within the grid)."""
    plot_measured_vs_predicted(ax, figure_context(df, MEASURE))


FIGURES = {
    "score_vs_length": score_vs_length,
    "answer_logprob_vs_length": answer_logprob_vs_length,
    "score_by_dataset": score_by_dataset,
    "answer_in_context_vs_length": answer_in_context_vs_length,
    "measured_vs_predicted": measured_vs_predicted,
}

__all__ = ["FIGURES", "LOGPROB", "MEASURE", "answer_in_context_vs_length", "answer_logprob_vs_length",
           "measured_vs_predicted", "per_dataset", "score_by_dataset", "score_vs_length"]
