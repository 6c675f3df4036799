"""`rope-harness report`: records of one or more runs -> figures and tables, the law drawn on every curve.

Data flow: `load_runs` (records*.jsonl and positions*.jsonl of every run, one pandas frame each) ->
per task and measured-length definition: `analyze` (per-length aggregate with a bootstrap CI over samples
-> table.csv; measured extrapolation length vs the law's prediction per setting -> summary.csv, one row per
setting, task and definition) -> the task's figure functions -> report.md and a self-contained report.html.
Outputs are written to a temporary folder next to the target and moved in place at the end, after all input
has been validated: bad input leaves nothing behind.

Shared pieces that task figure modules (harness/report_<task>.py) reuse:
- `harness.measure`: `MeasureSpec` (per-length records) and `PositionMeasureSpec` (per-position loss
  buckets): how one definition of a task's measured extrapolation length is computed, with bootstrap CIs;
- `figure_context(df, spec)` (here): everything a figure function needs (records, positions, the
  per-length table, the per-setting summary, colours), computed once by the report and attached to the
  frame; `ctx.measure(key)` gives another definition's context (e.g. 'position-loss');
- `harness.plots`: `plot_metric_curves`, `law_overlay`, `mark_measured`, `plot_measured_vs_predicted`,
  `finish_legend`, `format_length_axis`, and `NoData` (raise it from a figure function when there is
  nothing to draw: the figure is skipped and noted).

Task figure registry: a task module may define `FIGURES: dict[name, fn(records_df, ax)]` and `MEASURES`
(a list of MeasureSpec, the first the default; `MEASURE` alone still works as a one-definition list).
The report takes them from `tasks.<task>` and falls back to `harness.report_<task>`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.errors import InputError
from harness.measure import (
    Limit,
    MeasureSpec,
    bootstrap_weights,
    build_curve,
    build_position_curve,
    measured_limit,
    percentile_interval,
    position_limit,
    setting_seed,
    smooth_buckets,
)
from harness.plots import NoData, fmt_length

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# Columns that identify a setting's law inputs; copied from the records into summary.csv.
LAW_COLUMNS = ("model", "rope_type", "rope_theta", "pretrain_base", "train_len", "tune_len", "rotary_dim")
REQUIRED_COLUMNS = ("task", "setting", "length", "status")
DEFAULT_BOOTSTRAP = 1000
DEFAULT_CI = 0.95


# ============================================================================ measured extrapolation length


def _read_jsonl(path: Path, skipped: list[str]) -> list[dict[str, Any]]:
    rows, bad = [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    if bad:
        skipped.append(f"{path}: skipped {bad} unreadable line(s) (e.g. a line cut by a kill)")
    return rows


def _run_names(run_dirs: list[Path]) -> list[str]:
    names = [d.name or str(d) for d in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    return names


@dataclass
class Loaded:
    """Every run's records and positions, with a `run` column and unique `setting` labels."""

    records: pd.DataFrame
    positions: pd.DataFrame | None
    runs: list[tuple[str, Path, int]]
    notes: list[str] = field(default_factory=list)
    superseded: int = 0


def load_runs(run_dirs: Sequence[Path | str]) -> Loaded:
    """Read records*.jsonl (+ positions*.jsonl) of each run; raises InputError for unusable input.

    A setting is (run, label, rope_hash). The same label in several runs is suffixed with " [run]"; within a
    run a label with several rope hashes gets " #hash". A cell recorded more than once (a retry after a
    failure) keeps its ok record, else the last one.
    """
    if not run_dirs:
        raise InputError("no run folder given: pass one or more folders written by `rope-harness run`")
    dirs = [Path(d) for d in run_dirs]
    notes: list[str] = []
    frames, pos_frames, runs = [], [], []
    for run_dir, name in zip(dirs, _run_names(dirs), strict=True):
        if not run_dir.is_dir():
            raise InputError(f"{run_dir}: no such folder: pass a run folder written by `rope-harness run`")
        files = sorted(run_dir.glob("records*.jsonl"))
        rows = [row for f in files for row in _read_jsonl(f, notes)]
        if not rows:
            raise InputError(f"{run_dir}: no records (records*.jsonl missing or empty): pass a run folder "
                             "written by `rope-harness run`, or run it first")
        frame = pd.DataFrame(rows)
        missing = [c for c in REQUIRED_COLUMNS if c not in frame]
        if missing:
            raise InputError(f"{files[0]}: records lack {', '.join(missing)}: pass a folder whose records.jsonl "
                             "was written by `rope-harness run`")
        frame.insert(0, "run", name)
        frames.append(frame)
        runs.append((name, run_dir, len(frame)))
        pos_rows = [row for f in sorted(run_dir.glob("positions*.jsonl")) for row in _read_jsonl(f, notes)]
        if pos_rows:
            pos = pd.DataFrame(pos_rows)
            # a pass interrupted between its positions and its records is rerun on resume: keep the last copy
            keys = [c for c in ("setting", "rope_hash", "sample", "length", "pos_start") if c in pos]
            pos = pos.drop_duplicates(subset=keys, keep="last")
            pos.insert(0, "run", name)
            pos_frames.append(pos)
    records = pd.concat(frames, ignore_index=True, sort=False)
    for col in ("depth", "seed", "sample", "rope_hash", "error", *LAW_COLUMNS):
        if col not in records:
            records[col] = None
    records["length"] = pd.to_numeric(records["length"], errors="coerce")
    bad_len = records["length"].isna() | (records["length"] <= 0)
    if bad_len.any():
        notes.append(f"ignored {int(bad_len.sum())} record(s) without a positive length")
        records = records[~bad_len]
    records["rope_hash"] = records["rope_hash"].fillna("")
    positions = pd.concat(pos_frames, ignore_index=True, sort=False) if pos_frames else None
    records, positions = _unique_settings(records, positions)
    records, superseded = _dedupe(records)
    if superseded:
        notes.append(f"{superseded} failed record(s) were superseded by a later record of the same cell")
    return Loaded(records.reset_index(drop=True), positions, runs, notes, superseded)


def _unique_settings(records: pd.DataFrame, positions: pd.DataFrame | None):
    keys = records[["run", "setting", "rope_hash"]].drop_duplicates()
    runs_per_label = keys.groupby("setting")["run"].nunique()
    hashes_per = keys.groupby(["run", "setting"])["rope_hash"].nunique()
    label = {}
    for run, setting, rope_hash in keys.itertuples(index=False):
        text = str(setting)
        if hashes_per[(run, setting)] > 1:
            text += f" #{str(rope_hash)[:6]}"
        if runs_per_label[setting] > 1:
            text += f" [{run}]"
        label[(run, setting, rope_hash)] = text

    def relabel(frame: pd.DataFrame) -> pd.Series:
        hashes = frame["rope_hash"].fillna("") if "rope_hash" in frame else pd.Series("", index=frame.index)
        return pd.Series([label.get((r, s, h), str(s)) for r, s, h in zip(frame["run"], frame["setting"], hashes, strict=True)],
                         index=frame.index)

    records = records.assign(setting_label=records["setting"], setting=relabel(records))
    if positions is not None and {"setting"} <= set(positions):
        positions = positions.assign(setting=relabel(positions))
    return records, positions


def _dedupe(records: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    key = ["run", "setting", "task", "length", "depth", "seed", "sample"]
    frame = records.assign(_ok=(records["status"] == "ok").astype(int), _order=np.arange(len(records)))
    frame = frame.sort_values(["_ok", "_order"], kind="stable")
    dup = frame.duplicated(subset=key, keep="last")
    superseded = int((dup & (frame["_ok"] == 0)).sum())
    frame = frame[~dup].sort_values("_order").drop(columns=["_ok", "_order"])
    return frame, superseded


# ================================================================================================ analysis


def predict_for(row: pd.Series | dict[str, Any]):
    """The law's Prediction for a setting's law inputs, or (None, message) when they are unusable."""
    from harness import law

    def num(key):
        value = row.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    try:
        tune = num("tune_len")
        prediction = law.predict(
            rotary_dim=int(num("rotary_dim")) if num("rotary_dim") is not None else None,
            train_len=num("train_len"), base=num("rope_theta"), tune_len=tune,
            pretrain_base=num("pretrain_base") if num("pretrain_base") is not None else 10000.0,
            rope_type=str(num("rope_type") or "default"))
        return prediction, ""
    except (InputError, TypeError, ValueError) as exc:
        return None, f"law inputs unusable: {str(exc).splitlines()[0]}"


def _first(frame: pd.DataFrame, col: str):
    values = frame[col].dropna() if col in frame else []
    return values.iloc[0] if len(values) else None


def setting_order(records: pd.DataFrame) -> list[str]:
    """Settings ordered by model, rope type, theta, label: legends and colours follow this order."""
    first = records.groupby("setting", sort=False).first()
    keys = []
    for setting, row in first.iterrows():
        theta = pd.to_numeric(row.get("rope_theta"), errors="coerce")
        keys.append((str(row.get("model") or ""), str(row.get("rope_type") or ""),
                     float(theta) if pd.notna(theta) else 0.0, str(setting), setting))
    return [k[-1] for k in sorted(keys, key=lambda k: k[:-1])]


def setting_colors(settings: Sequence[str]) -> dict[str, Any]:
    """tab10 in setting order (a sampled viridis beyond ten settings)."""
    from matplotlib import colormaps

    settings = list(settings)
    if len(settings) <= 10:
        cmap = colormaps["tab10"]
        return {s: cmap(i) for i, s in enumerate(settings)}
    cmap = colormaps["viridis"]
    return {s: cmap(i / max(1, len(settings) - 1)) for i, s in enumerate(settings)}


@dataclass
class FigureContext:
    """What a task's figure functions draw from; built once per task and definition by the report.

    table: per (setting, length): mean (the aggregate), ci_low, ci_high, n, n_failed; for a per-position
    definition, per (setting, position bucket): length = the bucket's mean position, mean = its loss,
    smoothed, tokens, n (not written to table.csv).
    summary: one row per (setting, rule parameter) with law inputs, prediction and measured limit (summary.csv).
    settings: one row per setting: law inputs, regime, predicted_limit, measured_* for the first parameter.
    views: every definition's context of the task by MeasureSpec.key (this one included); `measure(key)`.
    """

    task: str
    spec: MeasureSpec
    factor: float | None
    records: pd.DataFrame
    positions: pd.DataFrame | None
    table: pd.DataFrame
    summary: pd.DataFrame
    settings: pd.DataFrame
    colors: dict[str, Any]
    order: list[str]
    ci: float = DEFAULT_CI
    delta: float | None = None
    views: dict[str, FigureContext] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def measure(self, key: str) -> FigureContext:
        """The context of the task's definition `key` (e.g. 'position-loss'); NoData when it was not computed."""
        if key in self.views:
            return self.views[key]
        if key == self.spec.key:
            return self
        raise NoData(f"no {key!r} measured length for task {self.task!r}"
                     + (f" ({'; '.join(self.notes)})" if self.notes else ""))


TABLE_COLUMNS = ["setting", "task", "metric", "length", "mean", "ci_low", "ci_high", "n", "n_failed"]


def _rule_params(spec: MeasureSpec, factors: Sequence[float | None], deltas: Sequence[float | None]
                 ) -> list[tuple[float | None, float | None]]:
    """(factor, delta) overrides for which a definition gets a summary row each (one for a threshold rule)."""
    if spec.rule == "factor":
        return [(f, None) for f in (list(factors) or [None])]
    if spec.rule == "delta":
        return [(None, d) for d in (list(deltas) or [None])]
    return [(None, None)]


def analyze(records: pd.DataFrame, spec: MeasureSpec | Sequence[MeasureSpec], *, task: str = "",
            factors: Sequence[float | None] = (None,), deltas: Sequence[float | None] = (None,),
            n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, ci: float = DEFAULT_CI,
            positions: pd.DataFrame | None = None, colors: dict[str, Any] | None = None) -> FigureContext:
    """Per-length table and per-setting summary of one task's records (all runs concatenated).

    `spec`: one definition or a list of them (a task's MEASURES; the first is the default). Returns the first
    definition's context; every definition's is in `.views`. A per-position definition is left out, with a
    note, when the task has no positions*.jsonl rows (unless it is the first).
    """
    specs = [spec] if isinstance(spec, MeasureSpec) else list(spec)
    if not specs:
        raise ValueError("analyze needs at least one MeasureSpec")
    records = records.copy()
    records.attrs = {}
    task = task or str(_first(records, "task") or "")
    order = setting_order(records)
    colors = colors or setting_colors(order)
    task_positions = None
    if positions is not None and len(positions):
        task_positions = positions[positions["task"] == task] if "task" in positions else positions
        task_positions = task_positions[task_positions["setting"].isin(order)]
    views: dict[str, FigureContext] = {}
    notes: list[str] = []
    for k, one in enumerate(specs):
        if one.source == "positions" and k and (task_positions is None or not len(task_positions)):
            notes.append(f"measured length {one.key!r} left out: no positions*.jsonl rows for task {task!r}")
            continue
        views[one.key] = _analyze_one(records, one, task=task, params=_rule_params(one, factors, deltas),
                                      n_boot=n_boot, seed=seed, ci=ci, positions=task_positions, colors=colors,
                                      order=order)
    for view in views.values():
        view.views, view.notes = views, notes
    return views[specs[0].key]


def _limit(spec: MeasureSpec, axis: np.ndarray, values, ref_len: float | None, factor: float | None,
           delta: float | None) -> Limit:
    """measured_limit of a per-length curve, or position_limit of a (loss, tokens) per-position curve."""
    if spec.source == "positions":
        return position_limit(axis, values[0], values[1], ref_len, spec, delta)  # type: ignore[arg-type]
    return measured_limit(axis, values, ref_len, spec, factor, delta)


def _length_curve_of(recs: pd.DataFrame, spec: MeasureSpec, *, task: str, setting: str, ci: float,
                     positions: pd.DataFrame | None, weights_seed: int, n_boot: int):
    """A setting's per-length aggregate: (lengths, aggregate, bootstrap aggregates or None, n_samples, table rows)."""
    curve = build_curve(recs, spec)
    weights = bootstrap_weights(len(curve.samples), n_boot, weights_seed)
    agg = curve.aggregate(spec) if curve.samples else np.full(len(curve.lengths), np.nan)
    boot = curve.aggregate(spec, weights) if weights is not None else None
    failed = recs[recs["status"] != "ok"].groupby("length").size()
    counts = curve.counts()
    rows = []
    for k, length in enumerate(curve.lengths):
        lo, hi = percentile_interval(boot[:, k], ci) if boot is not None else (math.nan, math.nan)
        rows.append({"setting": setting, "task": task, "metric": spec.name, "length": int(length), "mean": agg[k],
                     "ci_low": lo, "ci_high": hi, "n": int(counts[k]), "n_failed": int(failed.get(length, 0))})
    return curve.lengths, agg, (list(boot) if boot is not None else None), len(curve.samples), rows


def _position_curve_of(recs: pd.DataFrame, spec: MeasureSpec, *, task: str, setting: str, ci: float,
                       positions: pd.DataFrame | None, weights_seed: int, n_boot: int):
    """A setting's per-position aggregate: (positions, (loss, tokens), bootstrap (loss, tokens) pairs or None,
    n_samples, table rows)."""
    seeds = recs["seed"].astype(str).unique() if "seed" in recs else []
    pos = positions[positions["setting"] == setting] if positions is not None else None
    curve = build_position_curve(pos, seeds[0] if len(seeds) == 1 else None)
    weights = bootstrap_weights(len(curve.samples), n_boot, weights_seed)
    if curve.samples:
        loss, tokens = curve.aggregate()
    else:
        loss = tokens = np.full(len(curve.x), np.nan)
    smoothed = smooth_buckets(loss, tokens, spec.window)  # type: ignore[attr-defined]
    counts = curve.counts()
    rows = [{"setting": setting, "task": task, "metric": spec.name, "length": float(x), "mean": loss[k],
             "ci_low": math.nan, "ci_high": math.nan, "n": int(counts[k]), "n_failed": 0,
             "pos_start": int(curve.starts[k]), "pos_end": int(curve.ends[k]), "smoothed": smoothed[k],
             "tokens": tokens[k]} for k, x in enumerate(curve.x)]
    draws = None
    if weights is not None:
        boot_loss, boot_tokens = curve.aggregate(weights)
        draws = list(zip(boot_loss, boot_tokens, strict=True))
    return curve.x, (loss, tokens), draws, len(curve.samples), rows


def _analyze_one(records: pd.DataFrame, spec: MeasureSpec, *, task: str, params, n_boot: int, seed: int,
                 ci: float, positions: pd.DataFrame | None, colors: dict[str, Any], order: list[str]
                 ) -> FigureContext:
    table_rows, summary_rows, first_rows = [], [], []
    for setting in order:
        recs = records[records["setting"] == setting]
        weights_seed = setting_seed(seed, task, setting)
        curve_fn = _position_curve_of if spec.source == "positions" else _length_curve_of
        axis, point, draws_in, n_samples, rows = curve_fn(recs, spec, task=task, setting=setting, ci=ci,
                                                          positions=positions, weights_seed=weights_seed,
                                                          n_boot=n_boot)
        table_rows += rows
        info = {c: _first(recs, c) for c in LAW_COLUMNS}
        prediction, law_note = predict_for(info)
        ref_len = _first(recs, spec.reference)
        if ref_len is None:
            ref_len = _first(recs, "train_len")
        ref_len = float(ref_len) if ref_len is not None else None
        for n_param, (factor, delta) in enumerate(params):
            limit = _limit(spec, axis, point, ref_len, factor, delta)
            lo = hi = math.nan
            if draws_in is not None and np.isfinite(limit.value):
                draws = np.array([_limit(spec, axis, row, ref_len, factor, delta).value for row in draws_in])
                lo, hi = percentile_interval(draws, ci)
            predicted = prediction.extrapolation_limit if prediction is not None else None
            ratio = limit.value / predicted if predicted and np.isfinite(limit.value) else math.nan
            no_positions = spec.source == "positions" and not n_samples
            row_notes = [n for n in (law_note, "no positions*.jsonl rows for this setting" if no_positions
                                     else limit.note) if n]
            if _first(recs, "law_assumes_finetune"):
                row_notes.append("base changed without fine-tuning; the law assumes fine-tuning at tune_len")
            row = {
                "setting": setting, "model": info["model"], "task": task, "measure": spec.key,
                "rope_type": info["rope_type"], "rope_theta": info["rope_theta"],
                "pretrain_base": info["pretrain_base"], "train_len": info["train_len"], "tune_len": info["tune_len"],
                "rotary_dim": info["rotary_dim"], "regime": prediction.regime if prediction is not None else "",
                "critical_dim": prediction.critical_dim if prediction is not None else None,
                "predicted_limit": predicted,
                "measured_limit": limit.value, "measured_ci_low": lo, "measured_ci_high": hi,
                "measured_censored": bool(limit.censored) if np.isfinite(limit.value) else None,
                "ratio_measured_to_predicted": ratio,
                "definition": spec.definition(factor, delta),
                "factor": spec.param(factor, delta) if spec.rule == "factor" else None,
                "delta": spec.param(factor, delta) if spec.rule == "delta" else None,
                "reference_value": limit.reference, "threshold_value": limit.threshold,
                "n_samples": n_samples, "n_failed": int((recs["status"] != "ok").sum()),
                "law_assumes_finetune": bool(_first(recs, "law_assumes_finetune") or False),
                "rope_hash": _first(recs, "rope_hash"), "run": _first(recs, "run"), "note": "; ".join(row_notes),
            }
            summary_rows.append(row)
            if n_param == 0:
                first_rows.append(row)
    extra = ["pos_start", "pos_end", "smoothed", "tokens"] if spec.source == "positions" else []
    table = pd.DataFrame(table_rows, columns=TABLE_COLUMNS + extra)
    summary = pd.DataFrame(summary_rows)
    settings = pd.DataFrame(first_rows)
    if len(settings):
        settings = settings.set_index("setting", drop=False).rename_axis(None)
    first_factor, first_delta = params[0]
    factor = spec.param(first_factor, first_delta) if spec.rule == "factor" else None
    delta = spec.param(first_factor, first_delta) if spec.rule == "delta" else None
    return FigureContext(task, spec, factor, records, positions, table, summary, settings, colors, order, ci,
                         delta)


def figure_context(df: pd.DataFrame, spec: MeasureSpec | Sequence[MeasureSpec] | None = None) -> FigureContext:
    """The report's precomputed context attached to a task's records frame, or one computed now (with
    `spec` - one definition or the task's MEASURES -, default bootstrap) when a figure function is called on
    a plain frame, e.g. in a notebook."""
    ctx = df.attrs.get("context")
    if isinstance(ctx, FigureContext):
        return ctx
    if spec is None:
        raise ValueError("figure_context needs the task's MeasureSpec for a frame without a report context")
    return analyze(df, spec, positions=df.attrs.get("positions"), n_boot=200)


# ============================================================================================ plot helpers


def _task_modules(task: str) -> list[Any]:
    """tasks.<task> (when it loads) and harness.report_<task> (when it exists), in that order."""
    modules = []
    try:
        from tasks.base import get_task_module

        modules.append(get_task_module(task))
    except (InputError, ImportError):
        pass
    with contextlib.suppress(ImportError):
        modules.append(importlib.import_module(f"harness.report_{task}"))
    return modules


def task_measures(task: str) -> list[MeasureSpec]:
    """A task's measured-length definitions, its default first: MEASURES of tasks.<task>, else of
    harness.report_<task>; a module with only MEASURE has that one. The fallback's MEASURES are used for a task
    module that re-exports only its MEASURE when their first entry is that same spec."""
    first: MeasureSpec | None = None
    for module in _task_modules(task):
        measures = getattr(module, "MEASURES", None)
        if measures:
            measures = list(measures)
            if first is None or measures[0] == first:
                return measures
        if first is None:
            first = getattr(module, "MEASURE", None)
    return [first] if first is not None else []


def task_figures(task: str) -> tuple[dict[str, Callable[[pd.DataFrame, Axes], None]], MeasureSpec | None]:
    """FIGURES and the default MEASURE of a task: from tasks.<task>, else harness.report_<task>, else ({}, None)."""
    figures = None
    for module in _task_modules(task):
        figures = getattr(module, "FIGURES", None)
        if figures is not None:
            break
    measures = task_measures(task)
    return dict(figures or {}), (measures[0] if measures else None)


def _fmt_cell(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if column.endswith(("_len", "limit", "_low", "_high", "length")) or column in ("length",):
            return f"{value:,.0f}"
        if value == int(value) and abs(value) >= 1000:
            return f"{value:g}"
        return f"{value:.4g}"
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


@dataclass
class Block:
    kind: str  # h1 h2 p ul table img
    content: Any
    caption: str = ""


def _md(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.content)
        elif b.kind == "p":
            out.append(b.content)
        elif b.kind == "ul":
            out.append("\n".join(f"- {item}" for item in b.content))
        elif b.kind == "table":
            frame: pd.DataFrame = b.content
            head = "| " + " | ".join(map(str, frame.columns)) + " |"
            sep = "|" + "|".join("---" for _ in frame.columns) + "|"
            body = ["| " + " | ".join(_fmt_cell(v, c) for c, v in zip(frame.columns, row, strict=True)) + " |"
                    for row in frame.itertuples(index=False)]
            out.append("\n".join([head, sep, *body]))
        elif b.kind == "img":
            out.append(f"![{b.caption}]({b.content})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}td:first-child,
th:first-child{text-align:left}figure{margin:1em 0 2em}img{max-width:100%}figcaption{font-size:13px;color:#555}
code{background:#f4f4f4;padding:0 3px}"""


def _html(blocks: list[Block], folder: Path, title: str) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{html.escape(b.content)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{html.escape(b.content)}</p>")
        elif b.kind == "ul":
            out.append("<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in b.content) + "</ul>")
        elif b.kind == "table":
            frame = b.content
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt_cell(v, c).replace(chr(92) + '|', '|'))}</td>"
                                            for c, v in zip(frame.columns, row, strict=True)) + "</tr>"
                           for row in frame.itertuples(index=False))
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b.kind == "img":
            data = base64.b64encode((folder / b.content).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(b.caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


SUMMARY_COLUMNS = ["setting", "model", "task", "measure", "rope_type", "rope_theta", "pretrain_base", "train_len", "tune_len",
                   "rotary_dim", "regime", "critical_dim", "predicted_limit", "measured_limit", "measured_ci_low",
                   "measured_ci_high", "measured_censored", "ratio_measured_to_predicted", "definition", "factor",
                   "delta", "reference_value", "threshold_value", "n_samples", "n_failed", "law_assumes_finetune",
                   "rope_hash", "run", "note"]
FAILED_COLUMNS = ["run", "setting", "task", "length", "depth", "sample", "status", "error"]
MAX_FAILED_LISTED = 200


def _render_figure(fn: Callable, frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 9, "axes.labelsize": 9, "axes.titlesize": 10, "legend.fontsize": 7.5,
                         "savefig.dpi": 150, "figure.dpi": 100}):
        fig, ax = plt.subplots(figsize=(5.6, 3.7))
        try:
            fn(frame, ax)
            fig.savefig(path, bbox_inches="tight", facecolor="white")
        finally:
            plt.close(fig)


def build_report(run_dirs: Sequence[Path | str], out_dir: Path | str | None = None, *,
                 factors: Sequence[float] | None = None, deltas: Sequence[float] | None = None,
                 n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, ci: float = DEFAULT_CI,
                 tasks: Sequence[str] | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Write report.md, report.html, summary.csv, table.csv and PNG figures; return the output folder.

    out_dir defaults to <first run>/report/. Every task's measured-length definitions (its MEASURES) get a
    summary row per setting. `factors` override the factor of relative-rule definitions, `deltas` the delta
    (nats) of additive-rule ones, e.g. the per-position loss rule (several give one summary row each; figures
    use the first). Raises InputError before writing anything when the input is unusable.
    """
    if factors is not None:
        for f in factors:
            if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 1):
                raise InputError(f"--factor {f} must be a number above 1 (e.g. --factor 1.5): the measured length "
                                 "is where the metric gets that many times worse than its best")
    if deltas is not None:
        for d in deltas:
            if not (isinstance(d, (int, float)) and math.isfinite(d) and d > 0):
                raise InputError(f"--delta {d} must be a positive number of nats (e.g. --delta 0.5): the measured "
                                 "length is where the loss rises that far above its reference")
    if not 0 < ci < 1:
        raise InputError(f"--ci {ci} must lie between 0 and 1 (e.g. 0.95)")
    if n_boot < 0:
        raise InputError(f"--bootstrap {n_boot} must be >= 0 (0 turns the CIs off)")
    loaded = load_runs(run_dirs)
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dirs[0]) / "report"
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
    contexts: list[tuple[FigureContext, dict[str, Callable]]] = []
    for task in present:
        figures, spec = task_figures(task)
        measures = task_measures(task)
        if spec is None:
            notes.append(f"task {task!r}: no MEASURE spec found (tasks/{task}.py or harness/report_{task}.py); "
                         "its records are listed but not analysed")
            continue
        if spec.metric not in records:
            notes.append(f"task {task!r}: records have no {spec.metric!r} column")
        task_records = records[records["task"] == task]
        ctx = analyze(task_records, measures, task=task, factors=list(factors) if factors else [None],
                      deltas=list(deltas) if deltas else [None], n_boot=n_boot, seed=seed, ci=ci,
                      positions=loaded.positions, colors=colors)
        notes += [f"task {task!r}: {note}" for note in ctx.notes]
        contexts.append((ctx, figures))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir.parent))
    try:
        blocks = _write_outputs(tmp, loaded, contexts, notes, log)
        (tmp / "report.md").write_text(_md(blocks), encoding="utf-8")
        (tmp / "report.html").write_text(_html(blocks, tmp, "rope-harness report"), encoding="utf-8")
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(tmp.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_outputs(tmp: Path, loaded: Loaded, contexts, notes: list[str], log) -> list[Block]:
    records = loaded.records
    views = [view for c, _ in contexts for view in (c.views.values() if c.views else [c])]
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
        spec = ctx.spec
        blocks.append(Block("h2", f"Task: {ctx.task}"))
        task_views = list(ctx.views.values()) if ctx.views else [ctx]
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
            blocks += [Block("p", f"Measured extrapolation length `{view.spec.key}` ({view.spec.label(view.factor, view.delta)}):"),
                       Block("table", shown)]
        flagged = ctx.summary[ctx.summary["law_assumes_finetune"].astype(bool)]["setting"].unique()
        if len(flagged):
            blocks.append(Block("p", "Base changed at evaluation time only (law_assumes_finetune): "
                                + ", ".join(flagged) + ". The law's prediction assumes fine-tuning at tune_len."))
        frame = ctx.records.copy()
        frame.attrs = {"context": ctx, "positions": ctx.positions}
        for name, fn in figures.items():
            filename = f"{ctx.task}_{name}.png"
            try:
                _render_figure(fn, frame, tmp / filename)
            except NoData as exc:
                notes.append(f"figure {ctx.task}/{name} skipped: {exc}")
                continue
            except Exception as exc:  # a broken figure must not take the tables down with it
                message = f"figure {ctx.task}/{name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                notes.append(message)
                (log or (lambda m: print(m, file=sys.stderr)))(message)
                continue
            caption = (getattr(fn, "__doc__", None) or name).strip().splitlines()[0]
            blocks.append(Block("img", filename, caption))
        pivot = ctx.table.pivot_table(index="setting", columns="length", values="mean", aggfunc="first")
        if len(pivot):
            pivot = pivot.reindex([s for s in ctx.order if s in pivot.index])
            pivot.columns = [fmt_length(c) for c in pivot.columns]
            blocks += [Block("p", f"{spec.name} per length (mean over samples; CIs in table.csv):"),
                       Block("table", pivot.reset_index())]
    blocks.append(Block("h2", "Failed cells"))
    if len(failed):
        blocks.append(Block("p", f"{len(failed)} cell(s) did not finish (status other than ok); their lengths carry "
                                 "no value in the curves." + (f" First {MAX_FAILED_LISTED} shown; all in failed.csv."
                                                              if len(failed) > MAX_FAILED_LISTED else "")))
        blocks.append(Block("table", failed.head(MAX_FAILED_LISTED)))
    else:
        blocks.append(Block("p", "None: every cell finished."))
    if notes:
        blocks += [Block("h2", "Notes"), Block("ul", notes)]
    return blocks


# ================================================================================================== CLI


def add_parser(subparsers: Any) -> None:
    """Create the `report` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "report", help="figures and tables from run folders, with the law's predicted limit on every curve",
        description="Load records*.jsonl of one or more runs and write report.md, report.html (self-contained), "
                    "summary.csv, table.csv and PNG figures.")
    _add_arguments(parser)
    parser.set_defaults(func=command)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders to compare")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default <first run>/report)")
    parser.add_argument("--factor", type=float, nargs="+", default=None, metavar="F",
                        help="relative measured-length rules: how many times worse than the best (default per "
                             "task; ppl@L: 1.5); several give one summary row each")
    parser.add_argument("--delta", type=float, nargs="+", default=None, metavar="NATS",
                        help="additive measured-length rules: how many nats worse than the reference (default per "
                             "definition; per-position loss: 0.5, passkey answer log-prob: 2); several give one "
                             "summary row each")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help=f"bootstrap resamples for CIs (default {DEFAULT_BOOTSTRAP}; 0 = no CI)")
    parser.add_argument("--ci", type=float, default=DEFAULT_CI, help="CI level (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--task", action="append", default=None, metavar="NAME", help="only these tasks (repeatable)")


def command(args: argparse.Namespace) -> int:
    out = build_report(args.run_dirs, args.out, factors=args.factor, deltas=args.delta, n_boot=args.bootstrap,
                       seed=args.seed, ci=args.ci, tasks=args.task)
    print(f"report written to {out / 'report.md'} (and report.html, summary.csv, table.csv)")
    return 0
