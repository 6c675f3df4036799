"""Both RoPE limits on every length axis: training length, Liu's predicted limit, Men's retrieval bound.

Styles (shared by every task's figures and legends): training length dotted (labelled "T_train" at the
bottom edge), Liu et al.'s predicted limit dashed with a down triangle above the top edge, the retrieval
bound (Men et al.) dash-dot with a diamond above the top edge. A line belongs to the settings whose limit
sits there: in the setting's colour when it is one, grey when several share it; the markers above the
top edge are stacked, one per owning setting in its colour, so coinciding limits stay countable and
attributable. Limits far outside the data get a "Liu 129K ->" / "<- retrieval 22" label in the setting's
colour instead of stretching the axis. The legend lists only what was drawn (`law_legend_handles(ax)`).
Helpers read the Analysis (settings: train_len, predicted_limit, retrieval_bound, measured_*); they compute
nothing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.report.base import finite_number as _number
from harness.report.base import fmt_length
from harness.report.plots import format_length_axis

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import Analysis, FigureContext

TRAIN_STYLE = {"linestyle": ":", "linewidth": 1.1}
TUNE_STYLE = {"linestyle": (0, (1, 3)), "linewidth": 1.6}  # sparser dots: the length a model was extended to
PREDICTED_STYLE = {"linestyle": "--", "linewidth": 1.3}
RETRIEVAL_STYLE = {"linestyle": "-.", "linewidth": 1.2}  # dash-dot
SHARED_COLOR = "0.35"
SHARED_TRAIN_COLOR = SHARED_COLOR
# (summary column, gid prefix, line style, marker above the top edge, words of the far label)
LIMITS = (("predicted_limit", "law-predicted", PREDICTED_STYLE, "v", "Liu"),
          ("retrieval_bound", "law-retrieval", RETRIEVAL_STYLE, "D", "retrieval"))
_SAME_X = 0.03  # limits closer than 3% (in log x) share one column of top-edge markers
_STACK = 0.045  # axes-fraction height of one top-edge marker


def _owners(ctx: FigureContext, analysis: Analysis, column: str) -> dict[float, list[str]]:
    """{value: settings} of one summary column, settings in legend order."""
    out: dict[float, list[str]] = {}
    settings = analysis.settings
    if not len(settings) or column not in settings:
        return out
    for setting in ctx.order:
        if setting in settings.index:
            value = _number(settings.at[setting, column])
            if np.isfinite(value) and value > 0:
                out.setdefault(value, []).append(setting)
    return out


def law_overlay(ax: Axes, ctx: FigureContext, analysis: Analysis, reach: float = 2.0) -> list[Any]:
    """Training length, predicted limit and retrieval bound of every setting as vertical lines (see module).

    Call after the data are drawn. The x-range grows to show limits within `reach` x of the data's range.
    Returns the lines drawn: gid 'law-train:<settings>', 'law-predicted:<settings>',
    'law-retrieval:<settings>' (settings joined by '|' where several share the value).
    """
    from matplotlib.transforms import blended_transform_factory

    lo, hi = ax.get_xlim()
    lines: list[Any] = []
    if not len(analysis.settings):
        return lines
    trains = _owners(ctx, analysis, "train_len")
    # the length an extended model was tuned to (its window), where it differs from its training length
    tunes = {v: o for v, o in _owners(ctx, analysis, "tune_len").items() if v not in trains}
    new_lo, new_hi = min([lo] + [t / 1.15 for t in trains]), hi
    placed: list[tuple[float, str, str]] = []  # (x, marker, colour) of the top-edge markers
    far: list[tuple[bool, float, str, str]] = []  # (right of the view, value, label, colour)
    for column, gid, style, marker, word in LIMITS:
        for value, owners in _owners(ctx, analysis, column).items():
            color = ctx.colors[owners[0]] if len(owners) == 1 else SHARED_COLOR
            line = ax.axvline(value, color=color, zorder=1, **style)
            line.set_gid(f"{gid}:" + "|".join(owners))
            lines.append(line)
            if value > hi * reach or value < lo / reach:
                far += [(value > hi, value, word, ctx.colors[owner]) for owner in owners]
                continue
            new_hi, new_lo = max(new_hi, value * 1.15), min(new_lo, value / 1.15)
            placed += [(value, marker, ctx.colors[owner]) for owner in owners]
    for kind, values, style in (("train", trains, TRAIN_STYLE), ("tune", tunes, TUNE_STYLE)):
        for value, owners in values.items():
            color = ctx.colors[owners[0]] if len(owners) == 1 else SHARED_TRAIN_COLOR
            line = ax.axvline(value, color=color, zorder=1, **style)
            line.set_gid(f"law-{kind}:" + "|".join(owners))
            lines.append(line)
    ax.set_xlim(new_lo, new_hi)
    format_length_axis(ax)
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    for value, word in [*((t, "T_train") for t in trains), *((t, "T_tune") for t in tunes)]:
        if new_lo <= value <= new_hi:
            ax.text(value, 0.015, word, transform=edge, rotation=90, ha="right", va="bottom", fontsize=6,
                    color="0.25", zorder=6, bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                                                  "edgecolor": "none", "alpha": 0.8})
    height = _top_markers(ax, placed, edge)
    _far_labels(ax, far, height)
    return lines


def _top_markers(ax: Axes, placed: list[tuple[float, str, str]], edge) -> int:
    """Stack the markers above the top edge, one column per cluster of nearby x; returns the tallest stack."""
    columns: list[list[tuple[float, str, str]]] = []
    for item in sorted(placed, key=lambda p: p[0]):
        if columns and math.log(item[0] / columns[-1][0][0]) < _SAME_X:
            columns[-1].append(item)
        else:
            columns.append([item])
    for column in columns:
        for k, (x, marker, color) in enumerate(column):
            ax.plot([x], [1.0 + 0.03 + _STACK * k], marker=marker, markersize=5, color=color,
                    markeredgecolor="white", markeredgewidth=0.4, linestyle="none", transform=edge,
                    clip_on=False, zorder=7, gid="law-top-marker")
    return max((len(c) for c in columns), default=0)


def _far_labels(ax: Axes, far: list[tuple[bool, float, str, str]], height: int) -> None:
    """'Liu 129K ->' (right) and '<- retrieval 22' (left) above the top edge, stacked above the markers."""
    base = 1.0 + 0.03 + _STACK * height + (0.01 if height else 0.0)
    for right in (True, False):
        side = sorted((f for f in far if f[0] == right), key=lambda f: f[1])
        for k, (_, value, word, color) in enumerate(side):
            text = f"{word} {fmt_length(value)} \u2192" if right else f"\u2190 {word} {fmt_length(value)}"
            ax.annotate(text, xy=(1.0 if right else 0.0, base + 0.06 * k), xycoords="axes fraction",
                        ha="right" if right else "left", va="bottom", fontsize=7, color=color,
                        annotation_clip=False, gid="law-far")


def mark_measured(ax: Axes, ctx: FigureContext, analysis: Analysis, y: str = "threshold") -> None:
    """The measured limit on each curve: filled circle at (measured L, threshold); open '>' when censored."""
    for setting in ctx.order:
        if setting not in analysis.settings.index:
            continue
        row = analysis.settings.loc[setting]
        value = _number(row["measured_limit"])
        if not np.isfinite(value):
            continue
        yv = float(row["threshold_value"]) if y == "threshold" else float(y)
        censored = bool(row["measured_censored"])
        if censored:
            table = analysis.table
            table = table[(table["setting"] == setting) & (table["length"] == value)]
            yv = float(table["mean"].iloc[0]) if len(table) else yv
        color = ctx.colors[setting]
        ax.plot([value], [yv], marker=">" if censored else "o", markersize=7 if censored else 6.5,
                markerfacecolor="white" if censored else color, markeredgecolor=color, markeredgewidth=1.5,
                linestyle="none", zorder=5, gid=f"measured:{setting}")


def law_legend_handles(ax: Axes | None = None, measured: bool = True) -> list[Any]:
    """Legend entries for the overlay: with `ax`, only for what was drawn on it (training length, Liu's
    limit, retrieval bound, measured and censored markers); without, all of them (measured ones if asked)."""
    from matplotlib.lines import Line2D

    drawn = {"train", "predicted", "retrieval", "measured", "censored"}
    if ax is not None:
        drawn = set()
        for line in ax.get_lines():
            gid = line.get_gid() or ""
            kind = gid.split(":")[0]
            if kind.startswith("law-") and kind != "law-top-marker":
                drawn.add(kind[4:])
            elif kind == "measured":
                drawn.add("censored" if line.get_marker() == ">" else "measured")
    elif not measured:
        drawn -= {"measured", "censored"}
    handles = []
    if "train" in drawn:
        handles.append(Line2D([], [], color="0.3", **TRAIN_STYLE, label="training length"))
    if "tune" in drawn:
        handles.append(Line2D([], [], color="0.3", **TUNE_STYLE, label="tuning length (the window)"))
    if "predicted" in drawn:
        handles.append(Line2D([], [], color="0.3", marker="v", markersize=4.5, **PREDICTED_STYLE,
                              label="predicted limit (Liu law)"))
    if "retrieval" in drawn:
        handles.append(Line2D([], [], color="0.3", marker="D", markersize=4, **RETRIEVAL_STYLE,
                              label="retrieval bound (Men, B(m) < 0)"))
    if "measured" in drawn:
        handles.append(Line2D([], [], color="0.3", marker="o", linestyle="none", markersize=5,
                              label="measured limit"))
    if "censored" in drawn:
        handles.append(Line2D([], [], color="0.3", marker=">", markerfacecolor="white", linestyle="none",
                              markersize=6, label="censored (\u2265 grid end)"))
    return handles


# ============================================================================= heatmaps (categorical L)


# the heatmaps' vertical lines, one kind per limit: (summary column, gid prefix, style, legend label)
LAW_COLUMNS = (("train_len", "law-train", TRAIN_STYLE, "training length"),
               ("tune_len", "law-tune", TUNE_STYLE, "tuning length (the window)"),
               ("predicted_limit", "law-predicted", PREDICTED_STYLE, "predicted limit (Liu law)"),
               ("retrieval_bound", "law-retrieval", RETRIEVAL_STYLE, "retrieval bound (Men, B(m) < 0)"))


def categorical_x(value: float, lengths: np.ndarray) -> float:
    """Where length `value` sits on a heatmap's categorical length axis (column k at x = k), interpolated in
    log(length); NaN outside the columns."""
    if not (np.isfinite(value) and len(lengths) and lengths[0] <= value <= lengths[-1]):
        return math.nan
    if len(lengths) == 1:
        return 0.0
    return float(np.interp(math.log(value), np.log(lengths), np.arange(len(lengths))))


def law_columns(ax: Axes, view: Analysis, setting: str, lengths: np.ndarray, far: bool = False) -> None:
    """Training length (dotted), tuning length where it differs (sparse dots), predicted limit (dashed) and
    retrieval bound (dash-dot) at their place on a heatmap's categorical length axis (those inside it). With
    `far`, a limit outside the columns is named at the edge it lies beyond ('Liu 1.7K ->', '<- T_train 256'),
    so that every limit shows."""
    if setting not in view.settings.index or len(lengths) < 1:
        return
    row = view.settings.loc[setting]
    stacked = 0
    for key, gid, style, _ in LAW_COLUMNS:
        value = _number(row.get(key))
        if key == "tune_len" and value == _number(row.get("train_len")):
            continue  # the window is the training length: one line says both
        x = categorical_x(value, lengths) if len(lengths) > 1 else math.nan
        if np.isfinite(x):
            line = ax.axvline(x, color="black", zorder=3, **style)
            line.set_gid(f"{gid}:{setting}")
        elif far and np.isfinite(value):
            right = value > lengths[-1]
            words = FAR_WORDS[key]
            text = f"{words} {fmt_length(value)} \u2192" if right else f"\u2190 {words} {fmt_length(value)}"
            ax.text(0.99 if right else 0.01, 0.98 - 0.075 * stacked, text, transform=ax.transAxes, fontsize=6,
                    ha="right" if right else "left", va="top", zorder=7, gid=f"{gid}-far:{setting}",
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
                          "alpha": 0.85})
            stacked += 1


FAR_WORDS = {"train_len": "T_train", "tune_len": "T_tune", "predicted_limit": "Liu",
             "retrieval_bound": "retrieval"}


def heatmap_legend(fig: Any, panels: list[Axes], extra: list[Any] | tuple[Any, ...] = ()) -> None:
    """A key above the panels for every kind of limit line drawn on any of them, then `extra` handles (grey
    cells, markers): the panels are too small for a legend each."""
    from matplotlib.lines import Line2D

    drawn = {(line.get_gid() or "").split(":")[0] for axis in panels for line in axis.get_lines()}
    named = {(text.get_gid() or "").split(":")[0].removesuffix("-far") for axis in panels
             for text in axis.texts}
    handles: list[Any] = [Line2D([], [], color="black", label=label, **style)
                          for _, gid, style, label in LAW_COLUMNS if gid in drawn]
    if any(gid in named and gid not in drawn for _, gid, _, _ in LAW_COLUMNS):
        handles.append(Line2D([], [], color="none", label="limits beyond the grid: named at that edge"))
    handles += list(extra)
    if not handles:
        return
    boxes = [axis.get_position() for axis in panels]
    left, right = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    top = max(b.y1 for b in boxes) + 0.3 / fig.get_size_inches()[1]  # clear of the panel titles (0.3 in)
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=((left + right) / 2, top),
               ncol=min(3, len(handles)), frameon=False, fontsize=7.5, handlelength=2.6)
