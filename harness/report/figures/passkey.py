"""Report figures of the passkey task: accuracy and answer log-prob, per length and per needle depth.

The task's two measured-length definitions (accuracy, the default, and the answer log-prob) live in
tasks/passkey.py. Each figure function takes the task's FigureContext (everything precomputed by the
analysis step) and one matplotlib Axes; the per-setting heatmaps split that Axes' slot into one panel per
setting. The first paragraph of a docstring is the figure's caption.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.report.base import NoData
from harness.report.plots import (
    PREDICTED_STYLE,
    TRAIN_STYLE,
    finish_legend,
    fmt_length,
    law_legend_handles,
    law_overlay,
    mark_measured,
    plot_measured_vs_predicted,
    plot_metric_curves,
)
from harness.report.tables import Breakdown
from tasks.passkey import LOGPROB, MEASURE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import Analysis, FigureContext

# mean per setting, needle depth and length: the heatmaps' cells
TABLES = {"correct_by_depth": Breakdown("correct", ("depth",), numeric_by=True),
          "answer_logprob_by_depth": Breakdown("answer_logprob", ("depth",), numeric_by=True)}


def _chance(ctx: FigureContext) -> float | None:
    if "chance_logprob" not in ctx.records:
        return None
    values = pd.to_numeric(ctx.records["chance_logprob"], errors="coerce").dropna()
    return float(values.iloc[0]) if len(values) and values.nunique() == 1 else None


def accuracy_vs_length(ctx: FigureContext, ax: Axes) -> None:
    """Passkey accuracy (exact match of the first generated integer, mean over depths and samples) vs context
    length; dotted: training length, dashed: the law's predicted limit, circle: measured length (accuracy >=
    0.5)."""
    from matplotlib.lines import Line2D

    view = ctx.default
    plot_metric_curves(ax, ctx, view, ylabel="passkey accuracy", log_y=False)
    ax.set_ylim(-0.03, 1.03)
    threshold = MEASURE.threshold
    ax.axhline(threshold, color="0.55", linewidth=0.8, linestyle="-.", zorder=1)
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    extra = [Line2D([], [], color="0.55", linewidth=0.8, linestyle="-.", label=f"accuracy {threshold:g}")]
    finish_legend(ax, law_legend_handles() + extra)


def logprob_vs_length(ctx: FigureContext, ax: Axes) -> None:
    """Mean answer log-prob of ' K' in context (nats; band: bootstrap CI over samples) vs context length;
    grey: chance (uniform over keys), dotted: training length, dashed: the law's predicted limit, circle:
    measured length (log-prob >= its best at L <= tune_len - delta, default 2 nats)."""
    from matplotlib.lines import Line2D

    view = ctx.measure(LOGPROB.key)
    plot_metric_curves(ax, ctx, view, ylabel="answer log-prob (nats)", log_y=False)
    extra = []
    chance = _chance(ctx)
    if chance is not None:
        ax.axhline(chance, color="0.55", linewidth=0.9, linestyle="-.", zorder=1)
        extra.append(Line2D([], [], color="0.55", linewidth=0.9, linestyle="-.",
                            label="chance (uniform key)"))
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    finish_legend(ax, law_legend_handles() + extra)


def measured_vs_predicted(ctx: FigureContext, ax: Axes) -> None:
    """Measured passkey extrapolation length (longest L with accuracy >= 0.5, bootstrap CI) vs the law's
    predicted limit; open markers with arrows are censored (never failed within the grid)."""
    plot_measured_vs_predicted(ax, ctx, ctx.measure(MEASURE.key))


def measured_vs_predicted_logprob(ctx: FigureContext, ax: Axes) -> None:
    """Measured passkey extrapolation length (longest L with answer log-prob >= its best at L <= tune_len -
    delta, default 2 nats; bootstrap CI) vs the law's predicted limit; same axes as the accuracy figure."""
    plot_measured_vs_predicted(ax, ctx, ctx.measure(LOGPROB.key))


# ============================================================================================ heatmaps


def _panels(ax: Axes, n: int) -> list[Axes]:
    """`n` panels in the slot of `ax` (which is replaced when n > 1); the figure grows to fit them."""
    if n == 1:
        return [ax]
    fig = ax.figure
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    width, height = fig.get_size_inches()
    fig.set_size_inches(max(width, 3.3 * cols + 1.0), max(height, 2.6 * rows + 0.3))
    grid = ax.get_subplotspec().subgridspec(rows, cols, wspace=0.35, hspace=0.55)
    ax.remove()
    return [fig.add_subplot(grid[i // cols, i % cols]) for i in range(n)]


def _law_columns(ax: Axes, view: Analysis, setting: str, lengths: np.ndarray) -> None:
    """Training length (dotted) and predicted limit (dashed) at their place on the categorical length axis."""
    if setting not in view.settings.index or len(lengths) < 2:
        return
    row = view.settings.loc[setting]
    logs = np.log(lengths)
    for key, style, gid in (("train_len", TRAIN_STYLE, "law-train"), ("predicted_limit", PREDICTED_STYLE,
                                                                        "law-predicted")):
        value = row.get(key)
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if not (np.isfinite(value) and lengths[0] <= value <= lengths[-1]):
            continue
        x = float(np.interp(math.log(value), logs, np.arange(len(lengths))))
        line = ax.axvline(x, color="black", zorder=3, **style)
        line.set_gid(f"{gid}:{setting}")


def _heatmap(ctx: FigureContext, ax: Axes, metric: str, label: str, cmap: str,
             limits: tuple[float, float] | None, fmt: str) -> None:
    import matplotlib as mpl

    grid = ctx.tables[f"{metric}_by_depth"]
    if not len(grid):
        raise NoData(f"no ok {metric} values with a depth")
    settings = [s for s in ctx.order if s in set(grid["setting"])]
    lengths = np.sort(grid["length"].unique())
    depths = np.sort(grid["depth"].unique())
    tables = {s: grid[grid["setting"] == s].pivot(index="depth", columns="length", values="mean")
              .reindex(index=depths, columns=lengths).to_numpy(dtype=float) for s in settings}
    cells = np.concatenate([t.ravel() for t in tables.values()])
    cells = cells[np.isfinite(cells)]
    lo, hi = limits if limits is not None else (float(cells.min()), float(cells.max()))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    colormap = mpl.colormaps[cmap].with_extremes(bad="0.85")
    norm = mpl.colors.Normalize(lo, hi)
    image = None
    fig = ax.figure  # (ax leaves the figure when it is split into panels)
    panels = _panels(ax, len(settings))
    annotate = len(lengths) * len(depths) <= 60
    for axis, setting in zip(panels, settings, strict=True):
        table = tables[setting]
        image = axis.imshow(np.ma.masked_invalid(table), aspect="auto", cmap=colormap, norm=norm,
                            origin="upper", interpolation="nearest")
        axis.set_xticks(range(len(lengths)), [fmt_length(v) for v in lengths], fontsize=7,
                        rotation=45 if len(lengths) > 6 else 0)
        axis.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        axis.set_xlabel("context length L (tokens)", fontsize=8)
        axis.set_ylabel("needle depth", fontsize=8)
        axis.set_title(setting, fontsize=8)
        if annotate:
            for (i, j), value in np.ndenumerate(table):
                if np.isfinite(value):
                    r, g, b, _ = colormap(norm(value))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    axis.text(j, i, format(value, fmt), ha="center", va="center", fontsize=6,
                              color="white" if dark else "black")
        _law_columns(axis, ctx.default, setting, lengths)
    if image is not None:
        bar = fig.colorbar(image, ax=panels, shrink=0.85, pad=0.03)
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)


def heatmap_accuracy(ctx: FigureContext, ax: Axes) -> None:
    """Passkey accuracy per context length x needle depth (mean over samples), one panel per setting; dotted:
    training length, dashed: the law's predicted limit (where inside the grid); grey: no ok cell."""
    _heatmap(ctx, ax, "correct", "accuracy", "RdYlGn", (0.0, 1.0), ".2f")


def heatmap_logprob(ctx: FigureContext, ax: Axes) -> None:
    """Mean answer log-prob (nats) per context length x needle depth, one panel per setting: informative even
    where accuracy sits at chance; dotted: training length, dashed: the law's predicted limit."""
    _heatmap(ctx, ax, "answer_logprob", "answer log-prob (nats)", "viridis", None, ".1f")


FIGURES: dict[str, Any] = {
    "accuracy_vs_length": accuracy_vs_length,
    "logprob_vs_length": logprob_vs_length,
    "heatmap_accuracy": heatmap_accuracy,
    "heatmap_logprob": heatmap_logprob,
    "measured_vs_predicted": measured_vs_predicted,
    "measured_vs_predicted_logprob": measured_vs_predicted_logprob,
}
