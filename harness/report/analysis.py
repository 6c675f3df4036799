"""The report's analysis step: per-length tables, measured vs predicted limits, each task's FigureContext.

One pass per task computes everything the tables and every figure function draw from, with the run's
bootstrap settings, so figures never recompute curves or bootstrap CIs themselves.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.core.metrics import (
    TRANSFORMS,
    Limit,
    MeasureSpec,
    measured_limit,
    position_limit,
    smooth_buckets,
)
from harness.report.base import DEFAULT_BOOTSTRAP, DEFAULT_CI, DEFAULT_MIN_SAMPLES, NoData, fmt_length
from harness.report.checks import curve_warnings, peer_warnings, position_warnings, withheld
from harness.report.curves import (
    bootstrap_weights,
    build_curve,
    build_position_curve,
    percentile_interval,
    setting_seed,
)
from harness.report.families import family_of, model_families, setting_colors, setting_order
from harness.report.lawblock import law_group, measured_critical_dim, predict_for
from harness.report.load import LAW_COLUMNS

if TYPE_CHECKING:
    from harness.report.tables import TableSpec

TABLE_COLUMNS = ["setting", "task", "metric", "length", "mean", "ci_low", "ci_high", "n", "n_failed"]

__all__ = ["TABLE_COLUMNS", "Analysis", "FigureContext", "analyze", "family_of", "model_families",
           "predict_for", "setting_colors", "setting_order"]


def _first(frame: pd.DataFrame, col: str):
    """The first non-null value of a column (a setting's records all carry the same law inputs), else None."""
    values = frame[col].dropna() if col in frame else []
    return values.iloc[0] if len(values) else None


def _latest(frame: pd.DataFrame, col: str):
    """The last non-null value of a column, in the order the records were written."""
    values = frame[col].dropna() if col in frame else []
    return values.iloc[-1] if len(values) else None


@dataclass
class Analysis:
    """One measured-length definition of one task, computed once by the report.

    table: per (setting, length): mean (the aggregate), ci_low, ci_high, n, n_failed; for a per-position
    definition, per (setting, position bucket): length = the bucket's mean position, mean = its loss,
    smoothed, tokens, n (not written to table.csv).
    summary: one row per (setting, rule parameter) with law inputs, prediction and measured limit
    (summary.csv).
    settings: one row per setting: law inputs, regime, predicted_limit, measured_* for the first parameter.
    """

    spec: MeasureSpec
    factor: float | None
    delta: float | None
    table: pd.DataFrame
    summary: pd.DataFrame
    settings: pd.DataFrame
    threshold: float | None = None  # a threshold rule's threshold where `report --threshold` set it

    @property
    def params(self) -> tuple[float | None, float | None, float | None]:
        """(factor, delta, threshold) as spec.label / spec.definition take them."""
        return self.factor, self.delta, self.threshold


@dataclass
class FigureContext:
    """Everything a task's figure functions draw from, computed by the analysis step; figures only draw.

    analyses: the task's measured-length definitions by MeasureSpec.key, the default first (summary.csv);
    extras: definitions a figure draws but the summary leaves out (the figure module's EXTRA_MEASURES);
    tables: the figure module's TABLES, computed (see harness/report/tables.py);
    colors, order: a colour per setting and the legend order, shared by every task of the report.
    """

    task: str
    records: pd.DataFrame
    positions: pd.DataFrame | None
    colors: dict[str, Any]
    order: list[str]
    ci: float = DEFAULT_CI
    min_samples: int = DEFAULT_MIN_SAMPLES  # the evidence bar: samples per length a measured length needs
    family: str = ""  # the model family of these settings, where the report holds several (model_families)
    analyses: dict[str, Analysis] = field(default_factory=dict)
    extras: dict[str, Analysis] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def default(self) -> Analysis:
        """The task's default definition (the first of its measures)."""
        return next(iter(self.analyses.values()))

    def measure(self, key: str) -> Analysis:
        """The definition `key` (e.g. 'position-loss'); NoData when it was not computed."""
        found = self.analyses.get(key) or self.extras.get(key)
        if found is not None:
            return found
        raise NoData(f"no {key!r} measured length for task {self.task!r}"
                     + (f" ({'; '.join(self.notes)})" if self.notes else ""))


Params = tuple[float | None, float | None, float | None]  # (factor, delta, threshold) overrides


def _rule_params(measure: MeasureSpec, factors: Sequence[float | None], deltas: Sequence[float | None],
                 thresholds: Sequence[float | None] = (None,)) -> list[Params]:
    """(factor, delta, threshold) overrides for which a definition gets a summary row each; `thresholds`
    only reach a threshold rule that takes them (see analyze)."""
    if measure.rule == "factor":
        return [(f, None, None) for f in (list(factors) or [None])]
    if measure.rule == "delta":
        return [(None, d, None) for d in (list(deltas) or [None])]
    return [(None, None, t) for t in (list(thresholds) or [None])]


def _rule_values(measure: MeasureSpec, factor: float | None, delta: float | None,
                 threshold: float | None = None) -> Params:
    """The (factor, delta, threshold) a definition actually uses with these overrides: one of them (the
    threshold only where it was overridden), or none."""
    value = measure.param(factor, delta, threshold)
    return ((value if measure.rule == "factor" else None), (value if measure.rule == "delta" else None),
            (value if measure.rule == "threshold" and threshold is not None else None))


def analyze(records: pd.DataFrame, measures: MeasureSpec | Sequence[MeasureSpec], *, task: str = "",
            extra: Sequence[MeasureSpec] = (), tables: Mapping[str, TableSpec] | None = None,
            factors: Sequence[float | None] = (None,), deltas: Sequence[float | None] = (None,),
            n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, ci: float = DEFAULT_CI,
            positions: pd.DataFrame | None = None, colors: dict[str, Any] | None = None,
            columns: Mapping[str, Any] | None = None,
            min_samples: int = DEFAULT_MIN_SAMPLES, thresholds: Sequence[float | None] = (None,),
            threshold_measures: Collection[str] = ()) -> FigureContext:
    """One task's records (all runs concatenated) -> its FigureContext, every bootstrap done here.

    `measures`: one definition or a list of them (a task's measures; the first is the default). A per-position
    definition is left out, with a note, when the task has no positions*.jsonl rows (unless it is the
    first). `extra` definitions and `tables` are what the task's figures draw beyond that; they get the
    same n_boot, seed and rule overrides but stay out of summary.csv (table.csv lists the per-length ones).
    `columns`: record columns derived before anything is measured ({name: fn(records) -> Series or None}).
    `thresholds` override the threshold of the threshold-rule definitions whose key is in `threshold_measures`
    (`report --threshold`: RULER's effective length), one summary row each; other threshold rules keep theirs.
    A records definition other than the first whose metric no record carries is left out quietly.
    """
    definitions = [measures] if isinstance(measures, MeasureSpec) else list(measures)
    if not definitions:
        raise ValueError("analyze needs at least one MeasureSpec")
    records = records.copy()
    for name, derive in (columns or {}).items():
        values = derive(records)
        if values is not None:
            records[name] = values
    task = task or str(_first(records, "task") or "")
    order = setting_order(records)
    colors = colors or setting_colors(order)
    task_positions = None
    if positions is not None and len(positions):
        task_positions = positions[positions["task"] == task] if "task" in positions else positions
        task_positions = task_positions[task_positions["setting"].isin(order)]
    has_positions = task_positions is not None and len(task_positions) > 0
    ctx = FigureContext(task, records, task_positions, colors, order, ci, min_samples)

    def one(measure: MeasureSpec) -> Analysis:
        own = thresholds if measure.key in threshold_measures else (None,)
        return _analyze_one(records, measure, task=task, params=_rule_params(measure, factors, deltas, own),
                            n_boot=n_boot, seed=seed, ci=ci, positions=task_positions, order=order,
                            min_samples=min_samples)

    for k, measure in enumerate(definitions):
        if measure.source == "positions" and k and not has_positions:
            ctx.notes.append(f"measured length {measure.key!r} left out: no positions*.jsonl rows for task "
                             f"{task!r}")
            continue
        if measure.source == "records" and k and not _has_values(records, measure.metric):
            continue  # an optional metric (e.g. nll_key without --key-tokens): left out quietly
        ctx.analyses[measure.key] = one(measure)
    for measure in extra:
        if measure.key not in ctx.analyses and (measure.source != "positions" or has_positions):
            ctx.extras[measure.key] = one(measure)
    ctx.tables = {name: table.compute(records, task_positions) for name, table in (tables or {}).items()}
    for name, table in (tables or {}).items():
        note = table.note(ctx.tables[name]) if hasattr(table, "note") else ""
        if note:
            ctx.notes.append(note)
    return ctx


def _has_values(records: pd.DataFrame, metric: str) -> bool:
    return metric in records and bool(records[metric].notna().any())


def _limit(measure: MeasureSpec, axis: np.ndarray, values, ref_len: float | None, factor: float | None,
           delta: float | None, threshold: float | None = None) -> Limit:
    """measured_limit of a per-length curve, or position_limit of a (loss, tokens) per-position curve."""
    if measure.source == "positions":
        return position_limit(axis, values[0], values[1], ref_len, measure, delta)  # type: ignore[arg-type]
    return measured_limit(axis, values, ref_len, measure, factor, delta, threshold)


def _length_curve_of(recs: pd.DataFrame, measure: MeasureSpec, *, task: str, setting: str, ci: float,
                     positions: pd.DataFrame | None, weights_seed: int, n_boot: int):
    """A setting's per-length aggregate: (lengths, aggregate, bootstrap aggregates or None, n_samples, table
    rows)."""
    curve = build_curve(recs, measure)
    weights = bootstrap_weights(len(curve.samples), n_boot, weights_seed)
    agg = curve.aggregate(measure) if curve.samples else np.full(len(curve.lengths), np.nan)
    boot = curve.aggregate(measure, weights) if weights is not None else None
    failed = recs[recs["status"] != "ok"].groupby("length").size()
    counts = curve.counts()
    rows = []
    for k, length in enumerate(curve.lengths):
        lo, hi = percentile_interval(boot[:, k], ci) if boot is not None else (math.nan, math.nan)
        rows.append({"setting": setting, "task": task, "metric": measure.name, "length": int(length),
                     "mean": agg[k], "ci_low": lo, "ci_high": hi, "n": int(counts[k]),
                     "n_failed": int(failed.get(length, 0))})
    return curve.lengths, agg, (list(boot) if boot is not None else None), len(curve.samples), rows


def _position_curve_of(recs: pd.DataFrame, measure: MeasureSpec, *, task: str, setting: str, ci: float,
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
    smoothed = smooth_buckets(loss, tokens, measure.window)  # type: ignore[attr-defined]
    counts = curve.counts()
    rows = [{"setting": setting, "task": task, "metric": measure.name, "length": float(x), "mean": loss[k],
             "ci_low": math.nan, "ci_high": math.nan, "n": int(counts[k]), "n_failed": 0,
             "pos_start": int(curve.starts[k]), "pos_end": int(curve.ends[k]), "smoothed": smoothed[k],
             "tokens": tokens[k]} for k, x in enumerate(curve.x)]
    draws = None
    if weights is not None:
        boot_loss, boot_tokens = curve.aggregate(weights)
        draws = list(zip(boot_loss, boot_tokens, strict=True))
    return curve.x, (loss, tokens), draws, len(curve.samples), rows


def law_inputs_from(recs: pd.DataFrame) -> str:
    """Where a setting's law inputs came from (records' *_source fields), one short phrase; an input only
    assumed from the config is said to be; '' for records without any *_source field."""
    sources = {k: _latest(recs, f"{k}_source") for k in ("pretrain_base", "train_len", "tune_len")}
    if all(v is None for v in sources.values()):
        return ""
    sources = {k: "recorded" if v is None else v for k, v in sources.items()}  # its *_source field absent

    def said(source: Any) -> str:
        if source == "flag":
            return "flag"
        if source == "rope_harness_law":
            return "config's rope_harness_law"
        if isinstance(source, str) and source.startswith("known:"):
            return f"known-checkpoint table ({source.removeprefix('known:')})"
        if source == "recorded":
            return "as recorded (no source)"
        return f"assumed from the config ({source}): check"

    phrases = {k: said(v) for k, v in sources.items()}
    if len(set(phrases.values())) == 1:
        return next(iter(phrases.values()))
    return "; ".join(f"{k}: {v}" for k, v in phrases.items())


NO_LIMIT = Limit(math.nan, False, math.nan, math.nan)


def _measured_dims(regime: str, limit: Limit, lo: float, hi: float, info: dict[str, Any]) -> dict[str, Any]:
    """The measured critical dimension d ln(T / 2 pi) / ln(beta) and its CI (larger-base regime only, where
    Liu's limit is 2 pi beta^(d_extra / d)); a censored T gives a lower bound
    (`measured_critical_dim_censored`)."""
    keys = ("measured_critical_dim", "measured_critical_dim_ci_low", "measured_critical_dim_ci_high")
    out: dict[str, Any] = dict.fromkeys(keys, math.nan)
    out["measured_critical_dim_censored"] = None
    if regime != "larger-base" or not np.isfinite(limit.value):
        return out
    for key, value in zip(keys, (limit.value, lo, hi), strict=True):
        out[key] = measured_critical_dim(value, info["rope_theta"], info["rotary_dim"])
    out["measured_critical_dim_censored"] = bool(limit.censored)
    return out


def _add_peer_warnings(measure: MeasureSpec, rows: list[dict[str, Any]], params) -> None:
    """Withhold the length of a row whose reference is far worse than another setting's of the same model and
    samples (peer_warnings): a limit measured against a broken reference is a threshold crossing, not a length
    the model works to."""
    blank = {"measured_limit": math.nan, "measured_ci_low": math.nan, "measured_ci_high": math.nan,
             "measured_censored": None, "ratio_measured_to_predicted": math.nan,
             "ratio_measured_to_retrieval": math.nan, **_measured_dims("", NO_LIMIT, math.nan, math.nan, {})}
    for n_param, (factor, delta, _) in enumerate(params):
        group = [r for r in rows if r["_param"] == n_param]
        # means over different documents are not comparable, and a withheld row is no evidence either way
        peers_of = [None if r["_withheld"] else (r["model"], r["_samples"]) for r in group]
        found = peer_warnings(measure, [r["setting"] for r in group], peers_of,
                              [r["reference_value"] for r in group], factor, delta)
        for row in group:
            if row["setting"] in found:
                row.update(blank, warning=f"{found[row['setting']]}: no length is measured")


def chance_of(measure: MeasureSpec, recs: pd.DataFrame) -> float | None:
    """What a model that cannot do the task scores, on the aggregate's scale (MeasureSpec.chance)."""
    if measure.chance is not None:
        return float(measure.chance)
    if measure.chance_column and measure.chance_column in recs:
        values = pd.to_numeric(recs[measure.chance_column], errors="coerce").dropna()
        if len(values):
            return float(TRANSFORMS[measure.transform](np.array([values.mean()]))[0])
    return None


def _row_notes(law_note: str, limit_note: str, no_positions: bool, finetune_assumed: bool,
               interval: tuple[float, float], n_samples: int,
               bracket: tuple[float, float] | None = None) -> list[str]:
    """A summary row's notes: the law's, the limit's (or missing positions), the fine-tuning premise, and a
    zero-width CI that only says the samples agree (with the grid lengths around the crossing, the
    resolution a bootstrap over samples never shows)."""
    missing = "no positions*.jsonl rows for this setting"
    notes = [n for n in (law_note, missing if no_positions else limit_note) if n]
    if finetune_assumed:
        notes.append("base changed without fine-tuning; the law assumes fine-tuning at tune_len")
    lo, hi = interval
    if np.isfinite(lo) and lo == hi:
        notes.append(f"every bootstrap draw gave the same length: the {n_samples} samples agree, which a "
                     "zero-width CI shows; it is not a measurement to one token"
                     + (f": the grid puts the crossing between {fmt_length(bracket[0])} and "
                        f"{fmt_length(bracket[1])}, interpolated" if bracket else ""))
    return notes


def _reference_length(recs: pd.DataFrame, measure: MeasureSpec) -> float | None:
    """The record column `measure.reference` (tune_len), else train_len, else None."""
    ref_len = _first(recs, measure.reference)
    if ref_len is None:
        ref_len = _first(recs, "train_len")
    return float(ref_len) if ref_len is not None else None


def _analyze_one(records: pd.DataFrame, measure: MeasureSpec, *, task: str, params, n_boot: int, seed: int,
                 ci: float, positions: pd.DataFrame | None, order: list[str],
                 min_samples: int = DEFAULT_MIN_SAMPLES) -> Analysis:
    """One definition: per setting its curve, table rows and a summary row per rule parameter."""
    table_rows, summary_rows, first_rows = [], [], []
    for setting in order:
        recs = records[records["setting"] == setting]
        weights_seed = setting_seed(seed, task, setting)
        curve_fn = _position_curve_of if measure.source == "positions" else _length_curve_of
        axis, point, draws_in, n_samples, rows = curve_fn(recs, measure, task=task, setting=setting, ci=ci,
                                                          positions=positions, weights_seed=weights_seed,
                                                          n_boot=n_boot)
        table_rows += rows
        info = {c: _latest(recs, c) for c in LAW_COLUMNS}  # a rerun with corrected law inputs wins
        block = predict_for(info)
        ref_len = _reference_length(recs, measure)
        finetune_assumed = bool(_first(recs, "law_assumes_finetune") or False)
        chance = chance_of(measure, recs)
        samples = tuple(sorted(recs.loc[recs["status"] == "ok", "sample"].dropna().unique()))
        for n_param, (factor, delta, threshold) in enumerate(params):
            used_factor, used_delta, _ = _rule_values(measure, factor, delta, threshold)
            limit = _limit(measure, axis, point, ref_len, factor, delta, threshold)
            why_not = withheld(measure, limit.reference, chance, n_samples, min_samples)
            if why_not:
                limit = Limit(math.nan, False, limit.reference, limit.threshold, limit.note)
            lo = hi = math.nan
            if draws_in is not None and np.isfinite(limit.value):
                draws = np.array([_limit(measure, axis, row, ref_len, factor, delta, threshold).value
                                  for row in draws_in])
                lo, hi = percentile_interval(draws, ci)
            predicted = block.predicted_limit
            ratio = limit.value / predicted if predicted and np.isfinite(limit.value) else math.nan
            # a censored limit is a bound: its draws agree by construction
            row_notes = _row_notes(block.note, limit.note, measure.source == "positions" and not n_samples,
                                   finetune_assumed, (math.nan, math.nan) if limit.censored else (lo, hi),
                                   n_samples, limit.bracket)
            if why_not:
                warnings = [why_not]
            elif measure.source == "positions":
                warnings = position_warnings(limit.note)
            else:
                warnings = curve_warnings(measure, axis, point, ref_len, factor, delta,
                                          threshold) if n_samples else []
            row = {
                "setting": setting, "model": info["model"], "task": task, "measure": measure.key,
                "rope_type": info["rope_type"], "rope_theta": info["rope_theta"],
                "pretrain_base": info["pretrain_base"], "train_len": info["train_len"],
                "tune_len": info["tune_len"], "rotary_dim": info["rotary_dim"],
                "regime": block.regime, "critical_dim": block.critical_dim, "predicted_limit": predicted,
                "retrieval_bound": block.retrieval_bound, "critical_base": block.critical_base,
                "measured_limit": limit.value, "measured_ci_low": lo, "measured_ci_high": hi,
                "measured_censored": bool(limit.censored) if np.isfinite(limit.value) else None,
                "ratio_measured_to_predicted": ratio,
                "ratio_measured_to_retrieval": limit.value / block.retrieval_bound
                if block.retrieval_bound and np.isfinite(limit.value) else math.nan,
                **_measured_dims(block.regime, limit, lo, hi, info),
                "definition": measure.definition(factor, delta, threshold),
                "factor": used_factor, "delta": used_delta,
                "reference_value": limit.reference, "threshold_value": limit.threshold,
                "chance_value": math.nan if chance is None else chance,
                "n_samples": n_samples, "n_failed": int((recs["status"] != "ok").sum()),
                "law_assumes_finetune": finetune_assumed, "law_inputs_from": law_inputs_from(recs),
                "rope_hash": _first(recs, "rope_hash"), "run": _first(recs, "run"),
                "warning": "; ".join(warnings), "note": "; ".join(row_notes), "law_group": law_group(info),
                "_param": n_param, "_withheld": bool(why_not), "_samples": samples,
            }
            summary_rows.append(row)
            if n_param == 0:
                first_rows.append(row)
    _add_peer_warnings(measure, summary_rows, params)
    extra = ["pos_start", "pos_end", "smoothed", "tokens"] if measure.source == "positions" else []
    table = pd.DataFrame(table_rows, columns=TABLE_COLUMNS + extra)
    private = ["_param", "_withheld", "_samples"]
    summary = pd.DataFrame(summary_rows).drop(columns=private, errors="ignore")
    settings = pd.DataFrame(first_rows).drop(columns=private, errors="ignore")
    if len(settings):
        settings = settings.set_index("setting", drop=False).rename_axis(None)
    factor, delta, threshold = _rule_values(measure, *params[0])
    return Analysis(measure, factor, delta, table, summary, settings, threshold)
