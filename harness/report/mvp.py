"""The measured-vs-predicted figure: each setting's measured extrapolation length against Liu's prediction.

Settings with the same predicted limit (the zoo's tuning-bounded bases all predict T_tune) would hide
each other's markers: within such a group the points are spread a few percent apart in x, drawn
largest first, so every marker and CI bar stays visible. The legend lists only the marker kinds drawn, and
says what the CI bars are and, where sizes differ, what marker size encodes (the drawing order, nothing
else).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.report.base import NoData, fmt_length
from harness.report.plots import Handles, ci_handle, finish_legend, format_length_axis, handles, style_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import Analysis, FigureContext

REGIME_MARKERS = {"larger-base": "o", "tuning-bounded": "s"}
SPREAD = 1.18  # x-factor between points of one predicted value
SAME_PREDICTION = 0.01  # predictions closer than 1% (relative) count as one


NO_FINETUNE_MARK = "\u2020"  # a setting outside the law's premise: its base changed without fine-tuning
NO_FINETUNE_TEXT = f"{NO_FINETUNE_MARK} base changed without fine-tuning:\nthe law assumes it"


def point_label(setting: str, untuned: bool) -> str:
    """A measured point's legend label: the setting, marked where the law's premise does not hold."""
    return f"{setting} {NO_FINETUNE_MARK}" if untuned else setting


def _mvp_points(ctx: FigureContext, analysis: Analysis
                ) -> tuple[list[tuple[str, float, float, float, float, bool, str, bool]], list[str]]:
    """(setting, predicted, measured, ci_low, ci_high, censored, regime, law_assumes_finetune) of the settings
    with both values, and a line for each setting left off (no predicted limit, or no measured length)."""
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
                       float(row["measured_ci_high"]), bool(row["measured_censored"]), str(row["regime"]),
                       bool(row.get("law_assumes_finetune", False))))
    return points, aside


def spread_points(predicted: list[float], spread: float = SPREAD) -> list[tuple[float, int, int]]:
    """(x, rank in its group, group size) per point: points sharing a predicted value are spread around it
    by `spread` (a factor) in x, in their order."""
    groups: list[list[int]] = []
    for i in sorted(range(len(predicted)), key=lambda i: predicted[i]):
        if groups and abs(predicted[i] / predicted[groups[-1][0]] - 1) < SAME_PREDICTION:
            groups[-1].append(i)
        else:
            groups.append([i])
    out: list[tuple[float, int, int]] = [(0.0, 0, 1)] * len(predicted)
    for group in groups:
        for k, i in enumerate(group):
            out[i] = (predicted[i] * spread ** (k - (len(group) - 1) / 2), k, len(group))
    return out


def marker_size(rank: int, size: int) -> float:
    """Markers of one group shrink with their rank (drawn later, on top): 9 down to 5 points."""
    return 7.0 if size < 2 else 9.0 - 4.0 * rank / (size - 1)


def size_handle(shared: str) -> Handles:
    """The legend entry that says what marker size encodes: only the drawing order within a group of points
    that share `shared` (e.g. 'a predicted limit'), so that none hides another."""
    from matplotlib.lines import Line2D

    big, small = (Line2D([], [], color="0.3", marker="o", markersize=marker_size(k, 2), linestyle="none")
                  for k in (0, 1))
    return handles(big, small, label=f"large to small: settings sharing {shared},\nspread in x so that "
                                     "none hides another\n(size encodes nothing else)")


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
    placed = spread_points([p[1] for p in points])
    kinds = set()
    for (setting, _, measured, lo, hi, censored, regime, untuned), (x, rank, size) in zip(points, placed,
                                                                                         strict=True):
        color = ctx.colors[setting]
        marker = REGIME_MARKERS.get(regime, "D")
        kinds.add(regime if regime in REGIME_MARKERS else "other")
        kinds |= {"censored"} if censored else set()
        kinds |= {"untuned"} if untuned else set()
        kinds |= {"sizes"} if size > 1 else set()
        if np.isfinite(lo) and np.isfinite(hi):
            kinds.add("ci")
            ax.errorbar([x], [measured], yerr=[[max(0.0, measured - lo)], [max(0.0, hi - measured)]],
                        fmt="none", ecolor=color, elinewidth=1.2, capsize=3, zorder=3 + rank)
        ax.plot([x], [measured], marker=marker, markersize=marker_size(rank, size),
                linestyle="none", color=color, markerfacecolor="white" if censored else color,
                markeredgewidth=1.5, label=point_label(setting, untuned), zorder=4 + rank,
                gid=f"mvp:{setting}")
        if censored:
            ax.annotate("", xy=(x, measured * 1.5), xytext=(x, measured * 1.04),
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
    ax.set_xlabel("predicted extrapolation limit (tokens, Liu law)")
    label = analysis.spec.label(analysis.factor, analysis.delta)
    ax.set_ylabel(f"measured extrapolation length (tokens)\n{label}")
    style_axes(ax)
    legend = {"larger-base": ("o", "larger-base regime", "0.3"),
              "tuning-bounded": ("s", "tuning-bounded (law: \u2265 T_tune)", "0.3"),
              "other": ("D", "other regime", "0.3"),
              "censored": ("o", "censored (\u2265, never failed)", "white"),
              "untuned": ("", NO_FINETUNE_TEXT, "none")}
    extra: list[Any] = [Line2D([], [], color="0.3", marker=m, markerfacecolor=face, linestyle="none",
                               label=text) for kind, (m, text, face) in legend.items() if kind in kinds]
    extra += [ci_handle(ctx.ci)] if "ci" in kinds else []
    extra += [size_handle("a predicted limit")] if "sizes" in kinds else []
    if "untuned" in kinds:  # a text-only entry: last, under the marks it does not show
        extra.append(extra.pop(next(k for k, h in enumerate(extra) if h.get_label() == NO_FINETUNE_TEXT)))
    finish_legend(ax, extra)
    if aside:
        title = "Not on this plot (no predicted limit, or no measured length):"
        ax.text(0.0, -0.2, "\n".join([title, *aside]),
                transform=ax.transAxes, ha="left", va="top", fontsize=7.5, color="0.25")
