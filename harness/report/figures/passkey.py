"""Report figures of the passkey task: accuracy and answer log-prob, per length and per needle depth, with
both limits (Liu's predicted limit, Men's retrieval bound), measured vs predicted and against the base.

The task's two measured-length definitions (accuracy, the default, and the answer log-prob) live in
tasks/passkey. Heatmap cells whose prompts placed the needle away from the asked depth (short L) are hatched
and print the achieved depth (tables.DepthCheck). Each figure function takes the task's FigureContext
(everything precomputed by the analysis step) and one matplotlib Axes; the per-setting heatmaps split that
Axes' slot into one panel per setting. The first paragraph of a docstring is the figure's caption.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.report.base import NoData, fmt_length
from harness.report.basefig import TABLE as LAW_VS_BASE
from harness.report.basefig import plot_limit_vs_base
from harness.report.mvp import plot_measured_vs_predicted
from harness.report.overlay import (
    heatmap_legend,
    law_columns,
    law_legend_handles,
    law_overlay,
    mark_measured,
)
from harness.report.plots import band_caption, finish_legend, plot_metric_curves, split_panels
from harness.report.tables import Breakdown, DepthCheck, LawVsBase
from tasks.passkey import LOGPROB, MEASURE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report.analysis import FigureContext

# mean per setting, needle depth and length: the heatmaps' cells
TABLES = {"correct_by_depth": Breakdown("correct", ("depth",), numeric_by=True),
          "answer_logprob_by_depth": Breakdown("answer_logprob", ("depth",), numeric_by=True),
          "needle_depth_check": DepthCheck(), LAW_VS_BASE: LawVsBase()}
ACCURACY_SPREAD = 0.015  # vertical offset between settings' accuracy curves (they often coincide at 0 or 1)


def _chance(ctx: FigureContext) -> float | None:
    if "chance_logprob" not in ctx.records:
        return None
    values = pd.to_numeric(ctx.records["chance_logprob"], errors="coerce").dropna()
    return float(values.iloc[0]) if len(values) and values.nunique() == 1 else None


def accuracy_vs_length(ctx: FigureContext, ax: Axes) -> str:
    """Passkey accuracy (exact match of the first generated integer, mean over depths and samples) vs context
    length; each setting's curve is shifted by a small vertical offset (at most 0.015 per setting) and has its
    own marker, so coinciding curves stay visible; dotted: training length, dashed / triangle: Liu's predicted
    limit, dash-dot / diamond: the retrieval bound; circle: measured length (accuracy >= 0.5)."""
    from matplotlib.lines import Line2D

    view = ctx.default
    n = len(set(view.table["setting"]))
    banded = plot_metric_curves(ax, ctx, view, ylabel="passkey accuracy", log_y=False, spread=ACCURACY_SPREAD)
    pad = ACCURACY_SPREAD * n / 2
    ax.set_ylim(-0.03 - pad, 1.03 + pad)
    threshold = MEASURE.threshold
    ax.axhline(threshold, color="0.6", linewidth=0.8, linestyle="-", zorder=1)
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    extra = [Line2D([], [], color="0.6", linewidth=0.8, linestyle="-", label=f"accuracy {threshold:g}")]
    finish_legend(ax, law_legend_handles(ax) + extra)
    return band_caption(banded, ctx)


def logprob_vs_length(ctx: FigureContext, ax: Axes) -> str:
    """Mean answer log-prob of ' K' in context (nats) vs context length; dotted: training length, dashed /
    triangle: Liu's predicted limit, dash-dot / diamond: the retrieval bound; circle: measured length
    (log-prob >= its best at L <= tune_len - delta, default 2 nats)."""
    from matplotlib.lines import Line2D

    view = ctx.measure(LOGPROB.key)
    banded = plot_metric_curves(ax, ctx, view, ylabel="answer log-prob (nats)", log_y=False)
    extra, said = [], []
    chance = _chance(ctx)
    values = view.table[["mean", "ci_high"]].to_numpy(dtype=float)
    top = float(np.nanmax(values)) if np.isfinite(values).any() else math.nan
    if chance is not None and np.isfinite(top) and chance > top:
        said.append(f"Chance (a uniform guess over the keys, {chance:.1f} nats) lies above every value, so "
                    "it is not drawn: these models put less mass on the key than a uniform guess.")
    elif chance is not None:
        ax.axhline(chance, color="0.55", linewidth=0.9, linestyle=(0, (1, 3)), zorder=1)
        extra.append(Line2D([], [], color="0.55", linewidth=0.9, linestyle=(0, (1, 3)),
                            label="chance (uniform key)"))
        said.append("Grey dotted: chance, the log-prob of a uniform guess over the keys "
                    f"({chance:.1f} nats).")
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    finish_legend(ax, law_legend_handles(ax) + extra)
    return " ".join([*said, band_caption(banded, ctx)])


def measured_vs_predicted(ctx: FigureContext, ax: Axes) -> None:
    """Measured passkey extrapolation length (longest L with accuracy >= 0.5, bootstrap CI) vs the law's
    predicted limit; open markers with arrows are censored (never failed within the grid); points sharing a
    predicted value are spread a few percent apart in x."""
    plot_measured_vs_predicted(ax, ctx, ctx.measure(MEASURE.key))


def measured_vs_predicted_logprob(ctx: FigureContext, ax: Axes) -> None:
    """Measured passkey extrapolation length (longest L with answer log-prob >= its best at L <= tune_len -
    delta, default 2 nats; bootstrap CI) vs the law's predicted limit; same axes as the accuracy figure."""
    plot_measured_vs_predicted(ax, ctx, ctx.measure(LOGPROB.key))


def limit_vs_base(ctx: FigureContext, ax: Axes) -> None:
    """Passkey extrapolation length (accuracy >= 0.5) vs RoPE base for the settings sharing rotary_dim,
    pretrain_base, train_len and tune_len: Liu's law (solid, shaded where it gives no upper bound), the
    retrieval bound (dash-dot), T_train / T_tune (horizontal), measured lengths with CIs (open: censored)."""
    plot_limit_vs_base(ax, ctx, ctx.measure(MEASURE.key))


def limit_vs_base_logprob(ctx: FigureContext, ax: Axes) -> None:
    """The same extrapolation-vs-base figure with the answer log-prob measured length (log-prob >= its best at
    L <= tune_len - 2 nats)."""
    plot_limit_vs_base(ax, ctx, ctx.measure(LOGPROB.key))


# ============================================================================================ heatmaps


def _depth_flags(ctx: FigureContext, setting: str, depths: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Achieved needle depth per (asked depth, length) cell where it strays from the asked one, else NaN."""
    check = ctx.tables.get("needle_depth_check")
    out = np.full((len(depths), len(lengths)), np.nan)
    if check is None or not len(check):
        return out
    rows = check[(check["setting"] == setting) & check["flagged"].astype(bool)]
    for row in rows.itertuples():
        i, j = np.searchsorted(depths, row.depth), np.searchsorted(lengths, row.length)
        if i < len(depths) and j < len(lengths) and depths[i] == row.depth and lengths[j] == row.length:
            out[i, j] = row.achieved
    return out


def _heatmap(ctx: FigureContext, ax: Axes, metric: str, label: str, cmap: str,
             limits: tuple[float, float] | None, fmt: str) -> str:
    import matplotlib as mpl

    grid = ctx.tables[f"{metric}_by_depth"]
    if not len(grid):
        raise NoData(f"no ok {metric} values with a depth")
    settings = [s for s in ctx.order if s in set(grid["setting"])]
    depths = np.sort(grid["depth"].unique())
    # each panel on its own grid of lengths: a coarser grid is not shown as cells that failed
    frames = {s: grid[grid["setting"] == s] for s in settings}
    own = {s: np.sort(frame["length"].unique()) for s, frame in frames.items()}
    tables = {s: frame.pivot(index="depth", columns="length", values="mean")
              .reindex(index=depths, columns=own[s]).to_numpy(dtype=float) for s, frame in frames.items()}
    cells = np.concatenate([t.ravel() for t in tables.values()])
    cells = cells[np.isfinite(cells)]
    lo, hi = limits if limits is not None else (float(cells.min()), float(cells.max()))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    colormap = mpl.colormaps[cmap].with_extremes(bad="0.85")
    norm = mpl.colors.Normalize(lo, hi)
    image = None
    fig = ax.figure  # (ax leaves the figure when it is split into panels)
    panels = split_panels(ax, len(settings))
    flagged = 0
    for axis, setting in zip(panels, settings, strict=True):
        table, lengths = tables[setting], own[setting]
        annotate = len(lengths) * len(depths) <= 60
        image = axis.imshow(np.ma.masked_invalid(table), aspect="auto", cmap=colormap, norm=norm,
                            origin="upper", interpolation="nearest")
        axis.set_xticks(range(len(lengths)), [fmt_length(v) for v in lengths], fontsize=7,
                        rotation=45 if len(lengths) > 6 else 0)
        axis.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        axis.set_xlabel("context length L (tokens)", fontsize=8)
        axis.set_ylabel("needle depth", fontsize=8)
        axis.set_title(setting, fontsize=8)
        achieved = _depth_flags(ctx, setting, depths, lengths)
        for i, j in zip(*np.where(np.isfinite(achieved)), strict=True):
            flagged += 1
            axis.add_patch(mpl.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////",
                                                 edgecolor="0.15", linewidth=0, gid="depth-flag"))
        if annotate:
            for (i, j), value in np.ndenumerate(table):
                if np.isfinite(value):
                    r, g, b, _ = colormap(norm(value))
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    if np.isfinite(achieved[i, j]):  # legible over the hatching: a light box, dark text
                        axis.text(j, i, f"{value:{fmt}}\n@{achieved[i, j]:.2f}", ha="center", va="center",
                                  fontsize=5.5, color="black", zorder=5,
                                  bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                                        "edgecolor": "none", "alpha": 0.85})
                    else:
                        axis.text(j, i, format(value, fmt), ha="center", va="center", fontsize=6,
                                  color="white" if dark else "black", zorder=5)
        law_columns(axis, ctx.default, setting, lengths)
    if image is not None:
        bar = fig.colorbar(image, ax=panels, shrink=0.85, pad=0.03)
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    from matplotlib.patches import Patch

    extra = []
    if np.isnan(np.concatenate([t.ravel() for t in tables.values()])).any():
        extra.append(Patch(facecolor="0.85", edgecolor="0.6", label="no ok cell"))
    if flagged:
        extra.append(Patch(facecolor="white", edgecolor="0.15", hatch="////",
                           label="needle placed off the asked depth"))
    heatmap_legend(fig, panels, extra)
    if not flagged:
        return ""
    return (f"Hatched ({flagged} cells, achieved depth printed as @d): the prompt placed the needle more "
            f"than {DepthCheck().tolerance:g} from the asked depth (short L); rows stay keyed by the asked "
            "depth.")


def heatmap_accuracy(ctx: FigureContext, ax: Axes) -> str:
    """Passkey accuracy per context length x asked needle depth (mean over samples), one panel per setting;
    the key above the panels names each vertical line (training length, the tuning window where it differs,
    Liu's predicted limit, the retrieval bound; drawn where inside the grid); grey: no ok cell."""
    return _heatmap(ctx, ax, "correct", "accuracy", "RdYlGn", (0.0, 1.0), ".2f")


def heatmap_logprob(ctx: FigureContext, ax: Axes) -> str:
    """Mean answer log-prob (nats) per context length x asked needle depth, one panel per setting: informative
    even where accuracy sits at chance; the key above the panels names each vertical line (training length,
    the tuning window where it differs, Liu's predicted limit, the retrieval bound)."""
    return _heatmap(ctx, ax, "answer_logprob", "answer log-prob (nats)", "viridis", None, ".1f")


FIGURES: dict[str, Any] = {
    "accuracy_vs_length": accuracy_vs_length,
    "logprob_vs_length": logprob_vs_length,
    "heatmap_accuracy": heatmap_accuracy,
    "heatmap_logprob": heatmap_logprob,
    "measured_vs_predicted": measured_vs_predicted,
    "measured_vs_predicted_logprob": measured_vs_predicted_logprob,
    "limit_vs_base": limit_vs_base,
    "limit_vs_base_logprob": limit_vs_base_logprob,
}
