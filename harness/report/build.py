"""`rope-harness report`: the order of the report's steps, and its outputs.

`load_runs` (load.py) -> per task `analyze` (analysis.py: every measured-length definition -> table.csv
and summary.csv, one summary row per setting, task and definition; plus what the task's figures draw) ->
the task's figure functions `fn(ctx, ax)` (figures/<task>.py, found by registry.py) -> report.md and a
self-contained report.html (render.py). Outputs are written to a temporary folder next to the target and
moved in place at the end, after all input has been validated: bad input leaves nothing behind.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from harness.errors import InputError, one_line, writable_folder
from harness.report.analysis import TABLE_COLUMNS, FigureContext, analyze, setting_colors, setting_order
from harness.report.base import DEFAULT_BOOTSTRAP, DEFAULT_CI, NoData
from harness.report.load import Loaded, load_runs
from harness.report.plots import fmt_length
from harness.report.registry import FigureFn, task_figures, task_measures
from harness.report.render import Block, render_figure, to_html, to_markdown

__all__ = ["build_report", "command"]

SUMMARY_COLUMNS = ["setting", "model", "task", "measure", "rope_type", "rope_theta", "pretrain_base",
                   "train_len", "tune_len", "rotary_dim", "regime", "critical_dim", "predicted_limit",
                   "measured_limit", "measured_ci_low", "measured_ci_high", "measured_censored",
                   "ratio_measured_to_predicted", "definition", "factor", "delta", "reference_value",
                   "threshold_value", "n_samples", "n_failed", "law_assumes_finetune", "rope_hash", "run",
                   "note"]
FAILED_COLUMNS = ["run", "setting", "task", "length", "depth", "sample", "status", "error"]
MAX_FAILED_LISTED = 200


def build_report(run_dirs: Sequence[Path | str], out_dir: Path | str | None = None, *,
                 factors: Sequence[float] | None = None, deltas: Sequence[float] | None = None,
                 n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, ci: float = DEFAULT_CI,
                 tasks: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Write report.md, report.html, summary.csv, table.csv and PNG figures; return the output folder.

    out_dir defaults to <first run>/report/. Every measured-length definition of a task (its Task's
    `measures`) gets a summary row per setting. `factors` override the factor of relative-rule definitions,
    `deltas` the delta (nats) of additive-rule ones, e.g. the per-position loss rule (several give one summary
    row each; figures use the first). Raises InputError before writing anything when the input is unusable.
    """
    if factors is not None:
        for f in factors:
            if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 1):
                raise InputError(f"--factor {f} must be a number above 1 (e.g. --factor 1.5): the measured "
                                 "length is where the metric gets that many times worse than its best")
    if deltas is not None:
        for d in deltas:
            if not (isinstance(d, (int, float)) and math.isfinite(d) and d > 0):
                raise InputError(f"--delta {d} must be a positive number of nats (e.g. --delta 0.5): the "
                                 "measured length is where the loss rises that far above its reference")
    if not 0 < ci < 1:
        raise InputError(f"--ci {ci} must lie between 0 and 1 (e.g. 0.95)")
    if n_boot < 0:
        raise InputError(f"--bootstrap {n_boot} must be >= 0 (0 turns the CIs off)")
    loaded = load_runs(run_dirs)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dirs[0]) / "report"
    writable_folder(out_dir, "--out")
    records = loaded.records
    present = sorted(records["task"].dropna().astype(str).unique())
    if tasks:
        unknown = [t for t in tasks if t not in present]
        if unknown:
            raise InputError(f"task(s) {', '.join(unknown)} not in these runs: use --task with one of "
                             f"{', '.join(present)}")
        present = [t for t in present if t in tasks]
    colors = setting_colors(setting_order(records))
    notes = list(loaded.notes)
    contexts: list[tuple[FigureContext, dict[str, FigureFn]]] = []
    for task in present:
        measures = task_measures(task)
        if not measures:
            notes.append(f"task {task!r}: no measured-length definition (an unknown task, or its Task has no "
                         "`measures`); its records are listed but not analysed")
            continue
        if measures[0].metric not in records:
            notes.append(f"task {task!r}: records have no {measures[0].metric!r} column")
        task_records = records[records["task"] == task]
        figures = task_figures(task)
        ctx = analyze(task_records, measures, task=task, extra=figures.extra_measures, tables=figures.tables,
                      factors=list(factors) if factors else [None], deltas=list(deltas) if deltas else [None],
                      n_boot=n_boot, seed=seed, ci=ci, positions=loaded.positions, colors=colors)
        notes += [f"task {task!r}: {note}" for note in ctx.notes]
        contexts.append((ctx, figures.figures))

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir.parent))
    except OSError as exc:  # e.g. a read-only or virtual file system: the user's --out, not our bug
        raise InputError(f"--out {out_dir}: cannot write there ({one_line(exc)}): pass a writable --out"
                         ) from None
    try:
        blocks = _write_outputs(tmp, loaded, contexts, notes, log)
        (tmp / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
        (tmp / "report.html").write_text(to_html(blocks, tmp, "rope-harness report"), encoding="utf-8")
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def caption(fn: FigureFn, name: str) -> str:
    """A figure's caption: its docstring's first paragraph on one line (else its name), so that a long
    caption can wrap in the source."""
    doc = inspect.getdoc(fn) or name
    return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())


def _write_outputs(tmp: Path, loaded: Loaded, contexts: list[tuple[FigureContext, dict[str, FigureFn]]],
                   notes: list[str], log: Callable[[str], None] | None) -> list[Block]:
    """Write the CSV files and figures into `tmp`; return the report's blocks (figure failures go to
    `notes`)."""
    records = loaded.records
    views = [view for ctx, _ in contexts for view in ctx.analyses.values()]
    summary = pd.concat([v.summary for v in views], ignore_index=True) if views else pd.DataFrame()
    summary = summary.reindex(columns=SUMMARY_COLUMNS)
    tables = [v.table for v in views if v.spec.source == "records" and len(v.table)]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=TABLE_COLUMNS)
    table = table.reindex(columns=TABLE_COLUMNS)
    summary.to_csv(tmp / "summary.csv", index=False)
    table.to_csv(tmp / "table.csv", index=False)
    failed = records[records["status"] != "ok"].reindex(columns=FAILED_COLUMNS)
    if len(failed):
        failed.to_csv(tmp / "failed.csv", index=False)

    blocks = [Block("h1", "rope-harness report")]
    run_items = [f"{name}: {path} ({n} records)" for name, path, n in loaded.runs]
    blocks += [Block("p", "Runs:"), Block("ul", run_items)]
    blocks.append(Block("p", "Files: summary.csv (one row per setting, task and measured-length definition), "
                             "table.csv (per setting, task, metric and length: aggregate, bootstrap CI over "
                             "samples, n)"
                        + (", failed.csv (every failed cell)" if len(failed) else "") + "."))
    for ctx, figures in contexts:
        blocks += _task_blocks(ctx, figures, tmp, notes, log)
    blocks.append(Block("h2", "Failed cells"))
    if len(failed):
        more = f" First {MAX_FAILED_LISTED} shown; all in failed.csv." if len(failed) > MAX_FAILED_LISTED \
            else ""
        blocks.append(Block("p", f"{len(failed)} cell(s) did not finish (status other than ok); their "
                                 "lengths carry no value in the curves." + more))
        blocks.append(Block("table", failed.head(MAX_FAILED_LISTED)))
    else:
        blocks.append(Block("p", "None: every cell finished."))
    if notes:
        blocks += [Block("h2", "Notes"), Block("ul", notes)]
    return blocks


def _task_blocks(ctx: FigureContext, figures: dict[str, FigureFn], tmp: Path, notes: list[str],
                 log: Callable[[str], None] | None) -> list[Block]:
    """One task's section: definitions, a summary table per definition, its figures (drawn into `tmp`), the
    per-length table."""
    blocks = [Block("h2", f"Task: {ctx.task}")]
    task_views = list(ctx.analyses.values())
    definitions = list(dict.fromkeys(f"{v.spec.name}: {v.spec.description}" for v in task_views
                                     if v.spec.description))
    definitions += [f"measured extrapolation length `{view.spec.key}`"
                    + (" (default)" if view is task_views[0] else "")
                    + f": {view.spec.definition(view.factor, view.delta)}" for view in task_views]
    definitions += [f"CIs: {100 * ctx.ci:g}% percentile bootstrap over samples (whole samples resampled)",
                    "predicted limit: Liu et al. (ICLR 2024) scaling law from each setting's law inputs "
                    "(rotary_dim, train_len, tune_len, pretrain_base, rope_theta) - harness/law.py"]
    blocks += [Block("p", "Definitions:"), Block("ul", definitions)]
    for view in task_views:
        shown = view.summary.reindex(columns=[
            "setting", "rope_type", "rope_theta", "train_len", "tune_len", "regime", "predicted_limit",
            "measured_limit", "measured_ci_low", "measured_ci_high", "measured_censored",
            "ratio_measured_to_predicted", "factor", "delta", "n_samples", "n_failed"])
        shown = shown.drop(columns=[c for c in ("factor", "delta") if shown[c].isna().all()])
        shown = shown.rename(columns={"ratio_measured_to_predicted": "measured/predicted",
                                      "measured_censored": "censored"})
        label = view.spec.label(view.factor, view.delta)
        blocks += [Block("p", f"Measured extrapolation length `{view.spec.key}` ({label}):"),
                   Block("table", shown)]
    default = ctx.default
    flagged = default.summary[default.summary["law_assumes_finetune"].astype(bool)]["setting"].unique()
    if len(flagged):
        blocks.append(Block("p", "Base changed at evaluation time only (law_assumes_finetune): "
                            + ", ".join(flagged) + ". The law's prediction assumes fine-tuning at tune_len."))
    for name, fn in figures.items():
        filename = f"{ctx.task}_{name}.png"
        try:
            render_figure(fn, ctx, tmp / filename)
        except NoData as exc:
            notes.append(f"figure {ctx.task}/{name} skipped: {exc}")
            continue
        except Exception as exc:  # a broken figure must not take the tables down with it
            message = f"figure {ctx.task}/{name} failed: {one_line(exc)}"
            notes.append(message)
            (log or (lambda m: print(m, file=sys.stderr)))(message)
            continue
        blocks.append(Block("img", filename, caption(fn, name)))
    pivot = default.table.pivot_table(index="setting", columns="length", values="mean", aggfunc="first")
    if len(pivot):
        pivot = pivot.reindex([s for s in ctx.order if s in pivot.index])
        pivot.columns = [fmt_length(c) for c in pivot.columns]
        blocks += [Block("p", f"{default.spec.name} per length (mean over samples; CIs in table.csv):"),
                   Block("table", pivot.reset_index())]
    return blocks


def command(args: argparse.Namespace) -> int:
    """`rope-harness report` (its parser: harness/cli.py, add_report_parser)."""
    out = build_report(args.run_dirs, args.out, factors=args.factor, deltas=args.delta, n_boot=args.bootstrap,
                       seed=args.seed, ci=args.ci, tasks=args.task)
    print(f"report written to {out / 'report.md'} (and report.html, summary.csv, table.csv)")
    return 0
