"""`rope-harness report`: the order of the report's steps, and its outputs.

`load_runs` (load.py) -> per task `analyze` (analysis.py: every measured-length definition -> table.csv
and summary.csv, one summary row per setting, task and definition; plus what the task's figures draw) ->
the task's figure functions `fn(ctx, ax)` (figures/<task>.py, found by registry.py) -> report.md and a
self-contained report.html (render.py). Outputs are written to a temporary folder next to the target and
moved in place at the end, after all input has been validated: bad input leaves nothing behind.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from harness.core.errors import InputError, one_line, writable_folder
from harness.law.liu import check_inputs as check_law_inputs
from harness.report.analysis import (
    TABLE_COLUMNS,
    FigureContext,
    analyze,
    model_families,
    setting_colors,
    setting_order,
)
from harness.report.base import DEFAULT_BOOTSTRAP, DEFAULT_CI, DEFAULT_MIN_SAMPLES, score_threshold
from harness.report.groups import GroupContext, gather, with_group_rows
from harness.report.headline import headline, headline_text
from harness.report.load import RunRecords, load_runs
from harness.report.page import (
    HEADLINE_TASK,
    caption,
    group_blocks,
    opening_blocks,
    provenance_items,
    task_blocks,
    task_order,
)
from harness.report.registry import FigureFn, FigureSet, task_figures, task_measures
from harness.report.render import Block, to_html, to_markdown

__all__ = ["build_report", "caption", "command", "console_answer"]

# summary.csv. Both limits: predicted_limit (Liu) and retrieval_bound (Men); critical_base = Liu's beta0.
# measured_critical_dim*: d ln(T / 2 pi) / ln(rope_theta) of the measured length and its CI, larger-base
# regime only (else empty); measured_critical_dim_censored: the measured length is censored, so the value is
# a lower bound. warning: why the measured length may mislead (a model broken at its reference lengths;
# checks.py).
SUMMARY_COLUMNS = ["setting", "model", "task", "measure", "rope_type", "rope_theta", "pretrain_base",
                   "train_len", "tune_len", "rotary_dim", "regime", "critical_base", "critical_dim",
                   "measured_critical_dim", "measured_critical_dim_ci_low", "measured_critical_dim_ci_high",
                   "measured_critical_dim_censored", "predicted_limit", "retrieval_bound",
                   "measured_limit", "measured_ci_low", "measured_ci_high", "measured_censored",
                   "ratio_measured_to_predicted", "ratio_measured_to_retrieval", "definition", "factor",
                   "delta", "reference_value", "threshold_value", "chance_value", "n_samples", "n_failed",
                   "law_assumes_finetune", "law_inputs_from", "rope_hash", "run", "warning", "note"]
FAILED_COLUMNS = ["run", "setting", "task", "length", "depth", "sample", "status", "error"]
MAX_FAILED_LISTED = 200


def build_report(run_dirs: Sequence[Path | str], out_dir: Path | str | None = None, *,
                 factors: Sequence[float] | None = None, deltas: Sequence[float] | None = None,
                 n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, ci: float = DEFAULT_CI,
                 tasks: Sequence[str] | None = None, log: Callable[[str], None] | None = None,
                 min_samples: int = DEFAULT_MIN_SAMPLES,
                 law: dict[str, list[tuple[str | None, float]]] | None = None,
                 thresholds: Sequence[float] | None = None) -> Path:
    """Write report.md, report.html, summary.csv, table.csv and PNG figures; return the output folder.

    out_dir defaults to <first run>/report/. Every measured-length definition of a task (its Task's
    `measures`) gets a summary row per setting. `factors` override the factor of relative-rule definitions,
    `deltas` the delta (nats) of additive-rule ones, e.g. the per-position loss rule (several give one summary
    row each; figures use the first). `thresholds` (a fraction of the 0-1 score, or a percentage above 1:
    85.6 = 0.856) set the threshold of the definitions a task's figure module names in THRESHOLD_MEASURES
    (RULER's effective length); other threshold rules keep theirs. Raises InputError before writing anything
    when the input is unusable.
    """
    thresholds = _check_params(factors, deltas, thresholds, ci, n_boot, min_samples)
    loaded = load_runs(run_dirs)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dirs[0]) / "report"
    writable_folder(out_dir, "--out")
    records = loaded.records = with_law_inputs(loaded.records, law or {})
    sets = {task: task_figures(task) for task in records["task"].dropna().astype(str).unique()}
    present = _ordered(sets)
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
        figures = sets[task]
        for family, family_records in model_families(records[records["task"] == task]).items():
            ctx = analyze(family_records, measures, task=task, extra=figures.extra_measures,
                          tables=figures.tables, factors=list(factors) if factors else [None],
                          deltas=list(deltas) if deltas else [None], n_boot=n_boot, seed=seed, ci=ci,
                          positions=loaded.positions, colors=colors, columns=figures.columns,
                          min_samples=min_samples, thresholds=thresholds or [None],
                          threshold_measures=figures.threshold_measures)
            ctx.family = family
            notes += [f"task {task!r}{f' ({family})' if family else ''}: {note}" for note in ctx.notes]
            contexts.append((ctx, figures.figures))
    if thresholds and not any(sets[t].threshold_measures for t in present):
        notes.append(f"--threshold {', '.join(f'{t:g}' for t in thresholds)}: no task here takes it")
    groups = gather([ctx for ctx, _ in contexts], {t: sets[t].group for t in present if sets[t].group})

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir.parent))
    except OSError as exc:  # e.g. a read-only or virtual file system: the user's --out, not our bug
        raise InputError(f"--out {out_dir}: cannot write there ({one_line(exc)}): pass a writable --out"
                         ) from None
    try:
        blocks = _write_outputs(tmp, loaded, contexts, notes, log, groups)
        (tmp / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
        (tmp / "report.html").write_text(to_html(blocks, tmp, "rope-harness report"), encoding="utf-8")
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _ordered(sets: dict[str, FigureSet]) -> list[str]:
    """The report's task order (page.task_order), a group's tasks (RULER's) together where its name sorts, in
    the group's order."""
    def key(task: str) -> tuple:
        group = sets[task].group
        if group is None:
            return task != HEADLINE_TASK, task, 0
        return True, group.name.lower(), group.order.index(task) if task in group.order else len(group.order)

    return sorted(task_order(list(sets)), key=key)


def _check_params(factors: Sequence[float] | None, deltas: Sequence[float] | None,
                  thresholds: Sequence[float] | None, ci: float, n_boot: int, min_samples: int
                  ) -> list[float] | None:
    """InputError for an unusable rule parameter or bootstrap setting; returns the thresholds on the 0-1
    scale."""
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
    if min_samples < 1:
        raise InputError(f"--min-samples {min_samples} must be >= 1 (e.g. 3)")
    return _thresholds(thresholds)


def _thresholds(values: Sequence[float] | None) -> list[float] | None:
    """--threshold values on the 0-1 score scale (a value above 1 is a percentage); InputError otherwise."""
    if values is None:
        return None
    out = []
    for value in values:
        try:
            out.append(score_threshold(value))
        except (TypeError, ValueError):
            raise InputError(f"--threshold {value} must be a score threshold in (0, 100]: a fraction of the "
                             "0-1 score (0.856) or, above 1, a percentage (RULER's 85.6)") from None
    return out


def with_law_inputs(records: pd.DataFrame, law: dict[str, list[tuple[str | None, float]]]) -> pd.DataFrame:
    """The law inputs as analysis-time choices: {"pretrain_base": [(label or None for all, value)], ...}
    replace the records' values (source "flag") for those settings; no number the model computed changes."""
    records = records.copy()
    labels = set(records["setting"].astype(str))
    for key, pairs in law.items():
        for label, value in pairs:
            if label is not None and label not in labels:
                flag = f"--{key.replace('_', '-')} {label}={value:g}"
                raise InputError(f"{flag}: no setting {label!r} in these runs: use one of "
                                 f"{', '.join(sorted(labels))} (LABEL=VALUE, the value after the last '='), "
                                 "or VALUE alone for every setting")
            rows = records["setting"] == label if label is not None else slice(None)
            records.loc[rows, key] = int(value) if key != "pretrain_base" else float(value)
            records.loc[rows, f"{key}_source"] = "flag"
    if law:  # a combination the law refuses is the flags' fault: named now, not as an empty prediction later
        for setting, recs in records.groupby("setting"):
            first = recs.iloc[0]
            try:
                check_law_inputs(first["train_len"], first["tune_len"], first["pretrain_base"])
            except InputError as exc:
                raise InputError(f"law inputs of {setting!r} after the flags: {exc}") from None
    return records


def _write_tables(tmp: Path, records: pd.DataFrame, contexts: list[FigureContext]) -> pd.DataFrame:
    """summary.csv, table.csv and, where cells failed, failed.csv; returns the failed cells."""
    views = [view for ctx in contexts for view in ctx.analyses.values()]
    summary = pd.concat([v.summary for v in views], ignore_index=True) if views else pd.DataFrame()
    summary = summary.reindex(columns=SUMMARY_COLUMNS)
    # table.csv: every per-length definition, the figure-only ones (e.g. ppl_sliding@L) included when present
    extras = [v for ctx in contexts for v in ctx.extras.values()]
    tables = [v.table for v in views + extras if v.spec.source == "records" and v.table["mean"].notna().any()]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=TABLE_COLUMNS)
    table = table.reindex(columns=TABLE_COLUMNS)
    summary.to_csv(tmp / "summary.csv", index=False)
    table.to_csv(tmp / "table.csv", index=False)
    failed = records[records["status"] != "ok"].reindex(columns=FAILED_COLUMNS)
    if len(failed):
        failed.to_csv(tmp / "failed.csv", index=False)
    return failed


def _write_outputs(tmp: Path, loaded: RunRecords, contexts: list[tuple[FigureContext, dict[str, FigureFn]]],
                   notes: list[str], log: Callable[[str], None] | None,
                   groups: list[GroupContext] = ()) -> list[Block]:
    """Write the CSV files and figures into `tmp`; return the report's blocks (figure failures go to
    `notes`). Order: the verdict per family and one figure (the first screen), the answer per setting, runs
    and provenance (collapsed), one section per task and family, failed cells, notes."""
    failed = _write_tables(tmp, loaded.records, [ctx for ctx, _ in contexts])
    answer = with_group_rows(headline([ctx for ctx, _ in contexts]), list(groups))
    (tmp / "headline.txt").write_text(headline_text(answer) + "\n" if len(answer) else "", encoding="utf-8")
    log = log or (lambda m: print(m, file=sys.stderr))
    sections = []
    firsts = [next(c for c, _ in contexts if any(c is m for m in g.members)) for g in groups]
    for ctx, figures in contexts:  # a group's section before its first member's
        sections += [b for g, first in zip(groups, firsts, strict=True) if first is ctx
                     for b in group_blocks(g, tmp, notes, log)]
        sections += task_blocks(ctx, figures, tmp, notes, log)
    opening = opening_blocks(answer, [ctx for ctx, _ in contexts], sections, list(groups))  # moves a figure
    blocks = [Block("h1", "rope-harness report"), *opening]
    if len(answer):
        blocks += [Block("h2", "What was measured"),
                   Block("p", "Per setting, the measured extrapolation length by the definition that tests "
                              "the law (per-position loss for perplexity), against Liu's predicted limit and "
                              "the retrieval bound; CIs over samples; details and definitions below.")]
        for task, group in answer.groupby("task", sort=False):
            blocks += [Block("p", f"{task}:"), Block("ul", [f"{r.setting}: {r.sentence}"
                                                             for r in group.itertuples()])]
    run_items = [f"{name}: {path} ({n} records)" for name, path, n in loaded.runs]
    blocks += [Block("details", "Runs, provenance and files"), Block("p", "Runs:"), Block("ul", run_items)]
    blocks += [Block("p", "Provenance (run.json of each run):"), Block("ul", provenance_items(loaded))]
    blocks.append(Block("p", "Files: summary.csv (one row per setting, task and measured-length definition), "
                             "table.csv (per setting, task, metric and length: aggregate, bootstrap CI over "
                             "samples, n)"
                        + (", failed.csv (every failed cell)" if len(failed) else "") + "."))
    blocks += [Block("end", ""), *sections, Block("h2", "Failed cells")]
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


def console_answer(report_dir: Path) -> str:
    """What the console prints after a report's path (`run` and `report` alike): the headline of
    headline.txt under its title; '' when the report measured nothing."""
    answer = Path(report_dir) / "headline.txt"
    if not answer.is_file() or not answer.stat().st_size:
        return ""
    return ("\nWhat was measured (the measured limit against Liu's law and the retrieval bound):\n"
            + answer.read_text(encoding="utf-8"))


def _law_flags_line(law: dict[str, list[tuple[str | None, float]]]) -> str:
    """Which law inputs the flags set, so that the headline below reads as their consequence."""
    said = [f"{key} = {value:g} for {'every setting' if label is None else repr(label)}"
            for key, pairs in law.items() for label, value in pairs]
    return f"law inputs from the flags (no rerun): {'; '.join(said)}" if said else ""


def command(args: argparse.Namespace) -> int:
    """`rope-harness report` (its parser: harness/cli/__init__.py, add_report_parser)."""
    law = {k: getattr(args, k) for k in ("pretrain_base", "train_len", "tune_len") if getattr(args, k, None)}
    out = build_report(args.run_dirs, args.out, factors=args.factor, deltas=args.delta, n_boot=args.bootstrap,
                       seed=args.seed, ci=args.ci, tasks=args.task, min_samples=args.min_samples, law=law,
                       thresholds=getattr(args, "threshold", None))
    print(f"report written to {out / 'report.md'} (and report.html, summary.csv, table.csv)")
    if law:
        print(_law_flags_line(law))
    print(console_answer(out), end="")  # as `run` ends: a changed law input shows its consequence here
    return 0
