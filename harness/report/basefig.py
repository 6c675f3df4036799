"""The extrapolation-vs-base figure: both limits as functions of the RoPE base, the measured lengths on top.

One panel per law group (settings sharing rotary_dim, pretrain_base, train_len and tune_len; see
lawblock.law_group) with two or more settings: x = base (log), y = length (log). Liu's piecewise law is the
solid black line (T_tune from beta3 to beta0, the jump at beta0, 2 pi beta^(d_extra/d) above), the region
below beta3 = T_tune / 2 pi where Liu gives no upper bound shaded; Men's retrieval bound is the dash-dot
line (evaluated on the table's log grid: it is not monotone in the base); T_train and T_tune are
horizontal references; each setting's measured length is a point with its CI bar, censored ones open with
an upward arrow. Everything drawn comes from the analysis step (tables.LawVsBase and the definition's
settings).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.report.base import NoData, NotApplicable, fmt_base, fmt_length
from harness.report.mvp import NO_FINETUNE_TEXT, marker_size, point_label, size_handle, spread_points
from harness.report.overlay import RETRIEVAL_STYLE, TRAIN_STYLE
from harness.report.plots import ci_handle, finish_legend, split_panels, style_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import Analysis, FigureContext

LIU_COLOR = "black"
RETRIEVAL_COLOR = "#7b3294"
TABLE = "law_vs_base"  # the figure modules' TABLES key for tables.LawVsBase


def _format_axes(ax: Axes) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_base(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = ax.get_ylim()
    step = max(1, math.ceil(math.log2(max(hi, 2) / max(lo, 1)) / 9))
    ax.yaxis.set_major_locator(LogLocator(base=2 ** step, numticks=20))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_length(v)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _measured(ax: Axes, ctx: FigureContext, analysis: Analysis, group: str) -> set[str]:
    """The group's measured lengths as points at their base; returns the kinds drawn that the legend must
    explain: 'censored', 'untuned' (base changed without fine-tuning), 'ci' (CI bars), 'sizes' (points
    sharing a base, drawn large to small)."""
    settings = analysis.settings
    rows = settings[(settings["law_group"] == group)] if "law_group" in settings else settings.iloc[0:0]
    rows = rows[np.isfinite(rows["measured_limit"].astype(float))]
    rows = rows.loc[[s for s in ctx.order if s in rows.index]]
    placed = spread_points([float(b) for b in rows["rope_theta"]], 1.5)
    kinds: set[str] = set()
    for (setting, row), (x, rank, size) in zip(rows.iterrows(), placed, strict=True):
        untuned = bool(row.get("law_assumes_finetune", False))
        color = ctx.colors[setting]
        value, lo, hi = (float(row[k]) for k in ("measured_limit", "measured_ci_low", "measured_ci_high"))
        censored = bool(row["measured_censored"])
        kinds |= {k for k, on in (("untuned", untuned), ("censored", censored), ("sizes", size > 1)) if on}
        if np.isfinite(lo) and np.isfinite(hi):
            kinds.add("ci")
            ax.errorbar([x], [value], yerr=[[max(0.0, value - lo)], [max(0.0, hi - value)]], fmt="none",
                        ecolor=color, elinewidth=1.2, capsize=3, zorder=4 + rank)
        ax.plot([x], [value], marker="o", markersize=marker_size(rank, size), linestyle="none", color=color,
                markerfacecolor="white" if censored else color, markeredgewidth=1.5,
                label=point_label(setting, untuned),
                zorder=5 + rank, gid=f"base-measured:{setting}")
        if censored:
            ax.annotate("", xy=(x, value * 1.6), xytext=(x, value * 1.05), zorder=5,
                        arrowprops={"arrowstyle": "-|>", "color": color, "linewidth": 1.3})
    return kinds


def plot_limit_vs_base(ax: Axes, ctx: FigureContext, analysis: Analysis) -> None:
    """Draw the figure (see the module); NotApplicable when no law group has two settings."""
    from matplotlib.lines import Line2D

    table = ctx.tables.get(TABLE)
    if table is None or not len(table):
        raise NotApplicable("no two settings share rotary_dim, pretrain_base, train_len and tune_len")
    groups = list(dict.fromkeys(table["group"]))
    settings = analysis.settings
    if "law_group" not in settings or not np.isfinite(
            settings[settings["law_group"].isin(groups)]["measured_limit"].astype(float)).any():
        raise NoData(f"no measured {analysis.spec.key} length to place against the base")
    for axis, group in zip(split_panels(ax, len(groups), 4.8, 3.4), groups, strict=True):
        rows = table[table["group"] == group].sort_values("base")
        first = rows.iloc[0]
        beta3, beta0 = float(first["beta3"]), float(first["beta0"])
        train, tune = float(first["train_len"]), float(first["tune_len"])
        lo_base = float(rows["base"].min())
        axis.axvspan(lo_base, beta3, color="0.9", zorder=0, linewidth=0, gid="liu-unbounded")
        axis.plot(rows["base"], rows["liu_limit"], color=LIU_COLOR, linewidth=1.7, zorder=3,
                  gid="liu-vs-base")
        axis.plot(rows["base"], rows["retrieval_bound"], color=RETRIEVAL_COLOR, zorder=3,
                  gid="retrieval-vs-base", **RETRIEVAL_STYLE)
        axis.axhline(train, color="0.35", zorder=1, gid="base-train", **TRAIN_STYLE)
        refs = [Line2D([], [], color="0.35", **TRAIN_STYLE, label=f"T_train = {fmt_length(train)}")]
        if tune != train:
            axis.axhline(tune, color="0.35", linestyle="--", linewidth=0.9, zorder=1, gid="base-tune")
            refs.append(Line2D([], [], color="0.35", linestyle="--", linewidth=0.9,
                               label=f"T_tune = {fmt_length(tune)}"))
        kinds = _measured(axis, ctx, analysis, group)
        axis.set_xlim(lo_base, float(rows["base"].max()))
        _format_axes(axis)
        axis.text(math.sqrt(lo_base * beta3), 0.5, "Liu: no upper bound",
                  transform=axis.get_xaxis_transform(), rotation=90, ha="center", va="center", fontsize=6.5,
                  color="0.3")
        axis.text(beta0, 0.02, " \u03b2\u2080", transform=axis.get_xaxis_transform(), ha="left", va="bottom",
                  fontsize=7, color="0.3")
        axis.set_xlabel("RoPE base (rope_theta)")
        axis.set_ylabel("length (tokens)")
        label = analysis.spec.label(analysis.factor, analysis.delta)
        axis.set_title(f"{group}\nmeasured: {label}", fontsize=7.5)
        style_axes(axis)
        found: list[Any] = [Line2D([], [], color=LIU_COLOR, linewidth=1.7, label="Liu law (predicted limit)"),
                            Line2D([], [], color=RETRIEVAL_COLOR, **RETRIEVAL_STYLE,
                                   label="retrieval bound (Men)"), *refs]
        if "censored" in kinds:
            found.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                                label="censored (\u2265, arrow)"))
        found += [ci_handle(ctx.ci)] if "ci" in kinds else []
        found += [size_handle("a base")] if "sizes" in kinds else []
        if "untuned" in kinds:
            found.append(Line2D([], [], linestyle="none", label=NO_FINETUNE_TEXT))
        finish_legend(axis, found)
