"""RULER's figures, shared by its 13 tasks (each defined in tasks/ruler/; the registry finds this module by
that package): per task its score and answer log-prob against length with both limits; once per report and
model family (GROUP) the family x length heatmap of the mean score, one panel per setting.

`--threshold` (report) sets the effective length's threshold (THRESHOLD_MEASURES). Every figure draws what
the analysis step computed (the members' per-length tables and measured lengths, gathered by groups.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from harness.report.base import NoData, NotApplicable, fmt_length
from harness.report.groups import grid_lengths
from harness.report.overlay import (
    categorical_x,
    heatmap_legend,
    law_columns,
    law_legend_handles,
    law_overlay,
    mark_measured,
)
from harness.report.plots import band_caption, finish_legend, plot_metric_curves, split_panels
from harness.report.registry import TaskGroup
from tasks.ruler.task import EFFECTIVE, LOGPROB, SCORE

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from harness.report.analysis import FigureContext
    from harness.report.groups import GroupContext

# RULER's own order of its configs (its synthetic.yaml): the heatmap's rows and the group's tables
ORDER = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
         "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2")
SPREAD = 0.015  # vertical offset between settings' score curves (they often coincide at 0 or 1)
# rows that get no length in a panel, hatched: (hatch, legend label)
HATCH = {"chance": "////", "insufficient": "...."}
HATCH_LABEL = {"chance": "at chance: no length", "insufficient": "under the evidence bar: no length"}


def score_vs_length(ctx: FigureContext, ax: Axes) -> str:
    """RULER score (fraction of the references found in the greedy answer; mean over depths, then samples)
    vs context length; grey lines: the default definition's 0.5 and the effective length's threshold (RULER's
    0.856 unless report --threshold); dotted: training length, dashed / triangle: Liu's predicted limit,
    dash-dot / diamond: the retrieval bound; circles: measured lengths at either threshold."""
    from matplotlib.lines import Line2D

    view = ctx.default
    n = len(set(view.table["setting"]))
    banded = plot_metric_curves(ax, ctx, view, ylabel="RULER score", log_y=False, spread=SPREAD)
    pad = SPREAD * n / 2
    ax.set_ylim(-0.03 - pad, 1.03 + pad)
    extra = []
    for key, style in ((SCORE.key, "-"), (EFFECTIVE.key, (0, (4, 2)))):
        if key not in ctx.analyses:
            continue
        measure = ctx.analyses[key]
        threshold = measure.spec.param(*measure.params)
        ax.axhline(threshold, color="0.6", linewidth=0.8, linestyle=style, zorder=1)
        extra.append(Line2D([], [], color="0.6", linewidth=0.8, linestyle=style,
                            label=f"{measure.spec.key} {threshold:g}"))
        mark_measured(ax, ctx, measure)
    law_overlay(ax, ctx, view)
    finish_legend(ax, law_legend_handles(ax) + extra)
    return band_caption(banded, ctx)


def logprob_vs_length(ctx: FigureContext, ax: Axes) -> str:
    """Mean teacher-forced log-prob of the one fixed answer string (nats) vs context length: graded where
    the greedy score sits at 0; grey dotted: chance (the records' chance_logprob); circle: measured length
    (log-prob >= its best at L <= tune_len - 2 nats)."""
    from matplotlib.lines import Line2D

    if LOGPROB.key not in ctx.analyses:
        raise NotApplicable("no fixed answer string: no answer log-prob")
    view = ctx.analyses[LOGPROB.key]
    banded = plot_metric_curves(ax, ctx, view, ylabel="answer log-prob (nats)", log_y=False)
    extra, said = [], []
    chance = np.nanmean(view.settings["chance_value"].to_numpy(dtype=float)) \
        if "chance_value" in view.settings and view.settings["chance_value"].notna().any() else np.nan
    if np.isfinite(chance):
        ax.axhline(chance, color="0.55", linewidth=0.9, linestyle=(0, (1, 3)), zorder=1)
        extra.append(Line2D([], [], color="0.55", linewidth=0.9, linestyle=(0, (1, 3)), label="chance"))
        said.append(f"Grey dotted: chance ({chance:.1f} nats, a uniform guess over the answer's symbols).")
    law_overlay(ax, ctx, view)
    mark_measured(ax, ctx, view)
    finish_legend(ax, law_legend_handles(ax) + extra)
    return " ".join([*said, band_caption(banded, ctx)])


def _rows(gctx: GroupContext, setting: str) -> pd.DataFrame:
    """The members' lengths by the group's definition for one setting (groups.GroupContext.lengths)."""
    lengths = gctx.lengths
    return lengths[(lengths["setting"] == setting) & (lengths["measure"] == gctx.group.measure)]


def _statuses(gctx: GroupContext, setting: str) -> dict[str, str]:
    rows = _rows(gctx, setting)
    return dict(zip(rows["task"], rows["status"], strict=True))


def _hatch_rows(axis: Axes, statuses: dict[str, str], tasks: list[str], columns: int) -> set[str]:
    """Hatch the rows of a panel whose task gets no length there (at chance, too few samples); returns the
    statuses hatched."""
    import matplotlib as mpl

    hatched = set()
    for i, task in enumerate(tasks):
        status = statuses.get(task, "none")
        if status in HATCH:
            hatched.add(status)
            axis.add_patch(mpl.patches.Rectangle((-0.5, i - 0.5), columns, 1, fill=False, hatch=HATCH[status],
                                                 edgecolor="0.25", linewidth=0, zorder=4,
                                                 gid=f"row-{status}:{task}"))
    return hatched


def _effective_marks(axis: Axes, gctx: GroupContext, setting: str, tasks: list[str], lengths: np.ndarray
                     ) -> None:
    """Each row's effective length on the categorical length axis: a bar at a crossing, '>' past the last
    column where it holds to the longest length."""
    for _, row in _rows(gctx, setting).iterrows():
        if row["task"] not in tasks or row["status"] not in ("measured", "holds"):
            continue
        i = tasks.index(row["task"])
        if row["status"] == "holds":
            axis.plot([len(lengths) - 0.5], [i], marker=">", color="black", markersize=5, linestyle="none",
                      zorder=6, clip_on=False, gid=f"effective-holds:{setting}:{row['task']}")
            continue
        x = categorical_x(float(row["measured_limit"]), lengths)
        if np.isfinite(x):  # at the top of the row, clear of the cell's value
            axis.plot([x], [i - 0.3], marker="v", color="black", markersize=6, markeredgecolor="white",
                      markeredgewidth=0.6, linestyle="none", zorder=6,
                      gid=f"effective:{setting}:{row['task']}")


def family_heatmap(gctx: GroupContext, ax: Axes) -> str:
    """RULER score per family (rows) x context length (columns), mean over samples, one panel per setting;
    black triangle: the family's effective length (score >= the effective threshold, interpolated), '>' at the
    right edge: it never fell below it on the grid; the key above the panels names each vertical line
    (training length, the tuning window where it differs, Liu's predicted limit, the retrieval bound; drawn
    where inside the grid, else named at the edge it lies beyond); grey: not run there; hatched: a family at
    chance or under the evidence bar in that setting (no length)."""
    import matplotlib as mpl
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    settings = [s for s in gctx.order if (gctx.scores["setting"] == s).any()]
    if not settings:
        raise NoData(f"no ok {SCORE.name} values in {gctx.group.name}'s tasks")
    tasks = gctx.tasks
    colormap = mpl.colormaps["RdYlGn"].with_extremes(bad="0.85")
    norm = mpl.colors.Normalize(0.0, 1.0)
    fig = ax.figure
    panels = split_panels(ax, len(settings), width=3.6, height=max(2.6, 0.3 * len(tasks) + 1.2))
    if len(panels) == 1:
        fig.set_size_inches(max(5.6, 0.75 * 8 + 2.5), max(3.7, 0.3 * len(tasks) + 1.6))
    grey = False
    image = None
    hatched: set[str] = set()
    effective = gctx.view(gctx.group.measure)
    for axis, setting in zip(panels, settings, strict=True):
        lengths = np.array(grid_lengths(gctx, setting))
        mine = gctx.scores[gctx.scores["setting"] == setting]
        table = (mine.pivot_table(index="task", columns="length", values="mean", aggfunc="first")
                 .reindex(index=tasks, columns=lengths).to_numpy(dtype=float))
        grey = grey or bool(np.isnan(table).any())
        image = axis.imshow(np.ma.masked_invalid(table), aspect="auto", cmap=colormap, norm=norm,
                            origin="upper", interpolation="nearest")
        axis.set_xticks(range(len(lengths)), [fmt_length(v) for v in lengths], fontsize=7,
                        rotation=45 if len(lengths) > 6 else 0)
        first_column = axis.get_subplotspec().colspan.start == 0
        axis.set_yticks(range(len(tasks)), tasks if first_column else [], fontsize=7)
        hatched |= _hatch_rows(axis, _statuses(gctx, setting), tasks, len(lengths))
        axis.set_xlabel("context length L (tokens)", fontsize=8)
        axis.set_title(setting, fontsize=8)
        if table.size <= 160:
            for (i, j), value in np.ndenumerate(table):
                if np.isfinite(value):
                    r, g, b, _ = colormap(norm(value))
                    axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, zorder=5,
                              color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
        if effective is not None:
            law_columns(axis, effective, setting, lengths, far=True)
        _effective_marks(axis, gctx, setting, tasks, lengths)
    if image is not None:
        bar = fig.colorbar(image, ax=panels, shrink=0.85, pad=0.03)
        bar.set_label("RULER score (mean over samples)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    threshold = effective.spec.param(*effective.params) if effective is not None else EFFECTIVE.threshold
    marks = {(line.get_gid() or "").split(":")[0] for a in panels for line in a.get_lines()}
    extra: list[Any] = []
    if "effective" in marks:
        extra.append(Line2D([], [], color="black", marker="v", markersize=6, linestyle="none",
                            label=f"effective length (score \u2265 {threshold:g})"))
    if "effective-holds" in marks:
        extra.append(Line2D([], [], color="black", marker=">", markersize=5, linestyle="none",
                            label="holds to the longest length"))
    if grey:
        extra.append(Patch(facecolor="0.85", edgecolor="0.6", label="not run"))
    extra += [Patch(facecolor="white", edgecolor="0.25", hatch=HATCH[s], label=HATCH_LABEL[s])
              for s in HATCH if s in hatched]
    heatmap_legend(fig, panels, extra)
    if "effective" in marks or "effective-holds" in marks:
        return ""
    return f"No family reaches an effective length (score \u2265 {threshold:g}) in any panel."


FIGURES: dict[str, Any] = {"score_vs_length": score_vs_length, "logprob_vs_length": logprob_vs_length}
THRESHOLD_MEASURES = (EFFECTIVE.key,)
GROUP = TaskGroup("RULER", measure=EFFECTIVE.key, fallback=LOGPROB.key, order=ORDER,
                  figures={"family_heatmap": family_heatmap})
