"""Shared plotting for the report's task figures: curves, the law overlay, measured-vs-predicted.

Every figure function of a task (harness/report/figures/<task>.py) draws on one Axes with these helpers, so
all figures share axes formatting, colours, the law overlay (training length dotted, predicted limit
dashed, in the curve's colour) and the markers for measured / censored limits. Helpers take the task's
FigureContext (order, colours) and the Analysis of the definition they draw; they compute nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.report.base import NoData

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import Analysis, FigureContext


def fmt_length(x: float) -> str:
    """4096 -> '4K', 131072 -> '128K', 1500 -> '1.5K', 300 -> '300'."""
    if not np.isfinite(x):
        return ""
    if x >= 1024 * 1024 and (x / 1024**2) * 10 % 1 == 0:
        return f"{x / 1024**2:g}M"
    if x >= 1024 and (x / 1024) * 10 % 1 == 0:
        return f"{x / 1024:g}K"
    if x >= 1000:
        return f"{x / 1000:.3g}k"
    return f"{x:.3g}"


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


def plot_metric_curves(ax: Axes, ctx: FigureContext, analysis: Analysis, ylabel: str | None = None,
                       log_y: bool = True, ci: bool = True) -> None:
    """One aggregate curve per setting (markers at grid points, CI band) from analysis.table."""
    table = analysis.table[np.isfinite(analysis.table["mean"].astype(float))]
    if not len(table):
        raise NoData(f"no ok {analysis.spec.name} values")
    for setting in ctx.order:
        rows = table[table["setting"] == setting].sort_values("length")
        if not len(rows):
            continue
        color = ctx.colors[setting]
        ax.plot(rows["length"], rows["mean"], marker="o", markersize=3.5, linewidth=1.5, color=color,
                label=setting, zorder=3)
        band = rows[np.isfinite(rows["ci_low"].astype(float))]
        if ci and len(band):
            ax.fill_between(band["length"], band["ci_low"], band["ci_high"], color=color, alpha=0.15,
                            linewidth=0, zorder=2)
    ax.set_xlabel("context length L (tokens)")
    ax.set_ylabel(ylabel or analysis.spec.name)
    format_length_axis(ax)
    format_value_axis(ax, log_y)
    style_axes(ax)


# Line styles of the law overlay (shared by every task's figures and legends).
TRAIN_STYLE = {"linestyle": ":", "linewidth": 1.1}
PREDICTED_STYLE = {"linestyle": "--", "linewidth": 1.3}
SHARED_TRAIN_COLOR = "0.35"


def law_overlay(ax: Axes, ctx: FigureContext, analysis: Analysis, reach: float = 2.0) -> list[Any]:
    """Training length and each setting's predicted limit as vertical lines in the curve's colour.

    Call after the data are drawn. A training length shared by several settings is drawn once, in grey
    (the colours would overlap). The x-range grows to show predicted limits up to `reach` x the data's
    largest length; farther ones keep their line (outside the view) and get a "predicted N ->" label in
    the setting's colour above the top-right corner.
    Returns the lines drawn (gid 'law-train:<setting>' / 'law-predicted:<setting>').
    """
    lo, hi = ax.get_xlim()
    lines: list[Any] = []
    settings = analysis.settings
    if not len(settings):
        return lines
    drawn_train: dict[float, list[str]] = {}
    for setting in ctx.order:
        if setting not in settings.index:
            continue
        train = settings.at[setting, "train_len"]
        if train is not None and np.isfinite(float(train)):
            drawn_train.setdefault(float(train), []).append(setting)
    for train, owners in drawn_train.items():
        color = ctx.colors[owners[0]] if len(owners) == 1 else SHARED_TRAIN_COLOR
        line = ax.axvline(train, color=color, zorder=1, **TRAIN_STYLE)
        line.set_gid("law-train:" + "|".join(owners))
        lines.append(line)
    new_hi = hi
    far = []
    for setting in ctx.order:
        if setting not in settings.index:
            continue
        predicted = settings.at[setting, "predicted_limit"]
        if predicted is None or not np.isfinite(float(predicted)):
            continue
        predicted = float(predicted)
        line = ax.axvline(predicted, color=ctx.colors[setting], zorder=1, **PREDICTED_STYLE)
        line.set_gid(f"law-predicted:{setting}")
        lines.append(line)
        if predicted > hi * reach:
            far.append((setting, predicted))
        else:
            new_hi = max(new_hi, predicted * 1.15)
    new_lo = min([lo] + [t / 1.15 for t in drawn_train])
    ax.set_xlim(new_lo, new_hi)
    format_length_axis(ax)
    for k, (setting, predicted) in enumerate(sorted(far, key=lambda p: p[1])):
        ax.annotate(f"predicted {predicted:,.0f} \u2192", xy=(1.0, 1.01 + 0.065 * k),
                    xycoords="axes fraction", ha="right", va="bottom", fontsize=7.5,
                    color=ctx.colors[setting], annotation_clip=False)
    return lines


def mark_measured(ax: Axes, ctx: FigureContext, analysis: Analysis, y: str = "threshold") -> None:
    """The measured limit on each curve: filled circle at (measured L, threshold); open when censored."""
    for setting in ctx.order:
        if setting not in analysis.settings.index:
            continue
        row = analysis.settings.loc[setting]
        value = float(row["measured_limit"]) if row["measured_limit"] is not None else math.nan
        if not np.isfinite(value):
            continue
        yv = float(row["threshold_value"]) if y == "threshold" else float(y)
        if row["measured_censored"]:
            table = analysis.table
            table = table[(table["setting"] == setting) & (table["length"] == value)]
            yv = float(table["mean"].iloc[0]) if len(table) else yv
        color = ctx.colors[setting]
        censored = bool(row["measured_censored"])
        ax.plot([value], [yv], marker=">" if censored else "o", markersize=7 if censored else 6.5,
                markerfacecolor="white" if censored else color, markeredgecolor=color, markeredgewidth=1.5,
                linestyle="none", zorder=5, gid=f"measured:{setting}")


def law_legend_handles(measured: bool = True) -> list[Any]:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="0.3", **TRAIN_STYLE, label="training length"),
               Line2D([], [], color="0.3", **PREDICTED_STYLE, label="predicted limit (law)")]
    if measured:
        handles += [Line2D([], [], color="0.3", marker="o", linestyle="none", markersize=5,
                           label="measured limit"),
                    Line2D([], [], color="0.3", marker=">", markerfacecolor="white", linestyle="none",
                           markersize=6, label="censored (\u2265 grid end)")]
    return handles


def finish_legend(ax: Axes, extra: Sequence[Any] = (), title: str | None = None) -> None:
    """Setting curves + `extra` handles in one compact legend right of the axes."""
    handles, labels = ax.get_legend_handles_labels()
    handles = list(handles) + list(extra)
    labels = list(labels) + [h.get_label() for h in extra]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=7.5,
              title=title, title_fontsize=8, handlelength=2.2, borderaxespad=0.0)


REGIME_MARKERS = {"larger-base": "o", "tuning-bounded": "s"}


def _mvp_points(ctx: FigureContext, analysis: Analysis
                ) -> tuple[list[tuple[str, float, float, float, float, bool, str]], list[str]]:
    """(setting, predicted, measured, ci_low, ci_high, censored, regime) of the settings with both values, and
    a line for each setting left off (no predicted limit, or no measured length)."""
    rows = analysis.settings
    points, aside = [], []
    for setting in ctx.order:
        if not len(rows) or setting not in rows.index:
            continue
        row = rows.loc[setting]
        measured = float(row["measured_limit"]) if row["measured_limit"] is not None else math.nan
        predicted = float(row["predicted_limit"]) if row["predicted_limit"] is not None else math.nan
        if not np.isfinite(predicted):
            what = row["regime"] or "no prediction"
            shown = (("\u2265 " if row["measured_censored"] else "") + fmt_length(measured)) \
                if np.isfinite(measured) else "n/a"
            aside.append(f"{setting} ({what}): measured {shown}")
            continue
        if not np.isfinite(measured):
            aside.append(f"{setting}: predicted {fmt_length(predicted)}, measured n/a")
            continue
        points.append((setting, predicted, measured, float(row["measured_ci_low"]),
                       float(row["measured_ci_high"]), bool(row["measured_censored"]), str(row["regime"])))
    return points, aside


def plot_measured_vs_predicted(ax: Axes, ctx: FigureContext, analysis: Analysis, share_limits: bool = True
                               ) -> None:
    """Measured extrapolation length vs the law's prediction per setting (log-log, y = x, CI bars).

    Censored points: open marker with an upward arrow (the true value is at least that). Settings without
    a predicted limit (unbounded, not-covered, unusable law inputs) are listed in a note under the axes.
    With `share_limits`, the axes span the points of every definition of the task (ctx.analyses), so the
    task's measured-vs-predicted figures compare at a glance.
    """
    from matplotlib.lines import Line2D

    rows = analysis.settings
    if not len(rows) or not np.isfinite(rows["measured_limit"].astype(float)).any():
        raise NoData("no measured extrapolation length")
    points, aside = _mvp_points(ctx, analysis)
    for setting, predicted, measured, lo, hi, censored, regime in points:
        color = ctx.colors[setting]
        marker = REGIME_MARKERS.get(regime, "D")
        if np.isfinite(lo) and np.isfinite(hi):
            ax.errorbar([predicted], [measured], yerr=[[max(0.0, measured - lo)], [max(0.0, hi - measured)]],
                        fmt="none", ecolor=color, elinewidth=1.2, capsize=3, zorder=3)
        ax.plot([predicted], [measured], marker=marker, markersize=7, linestyle="none", color=color,
                markerfacecolor="white" if censored else color, markeredgewidth=1.5, label=setting, zorder=4,
                gid=f"mvp:{setting}")
        if censored:
            ax.annotate("", xy=(predicted, measured * 1.5), xytext=(predicted, measured * 1.04),
                        arrowprops={"arrowstyle": "-|>", "color": color, "linewidth": 1.3}, zorder=4)
    views = list(ctx.analyses.values()) if share_limits else []
    if not any(view is analysis for view in views):
        views.append(analysis)
    spanned = [p for view in views for p in _mvp_points(ctx, view)[0]]
    if spanned:
        values = [v for p in spanned for v in (p[1], p[2], p[4] if np.isfinite(p[4]) else p[2], p[2] * 1.6)]
        lo_v, hi_v = min(values) / 1.6, max(values) * 1.3
    else:
        lo_v, hi_v = 256.0, 65536.0
    if not points:
        ax.text(0.5, 0.5, "no setting with a predicted limit", transform=ax.transAxes, ha="center",
                va="center", fontsize=9, color="0.4")
    ax.plot([lo_v, hi_v], [lo_v, hi_v], color="0.45", linewidth=1.0, linestyle="-", zorder=1, label="y = x")
    ax.set_xlim(lo_v, hi_v)
    ax.set_ylim(lo_v, hi_v)
    format_length_axis(ax, "x")
    format_length_axis(ax, "y")
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("predicted extrapolation limit (tokens, law)")
    label = analysis.spec.label(analysis.factor, analysis.delta)
    ax.set_ylabel(f"measured extrapolation length (tokens)\n{label}")
    style_axes(ax)
    extra = [Line2D([], [], color="0.3", marker="o", linestyle="none", label="larger-base regime"),
             Line2D([], [], color="0.3", marker="s", linestyle="none",
                    label="tuning-bounded (law: \u2265 T_tune)"),
             Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                    label="censored (\u2265, never failed)")]
    finish_legend(ax, extra)
    if aside:
        ax.text(0.0, -0.2, "Not on this plot (no predicted limit):\n" + "\n".join(aside),
                transform=ax.transAxes, ha="left", va="top", fontsize=7.5, color="0.25")
