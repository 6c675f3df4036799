"""The answer first: per task and setting, the measured limit against both laws, in one sentence each.

The definition that tests the law is the per-position one where the task has it (perplexity: the loss at a
position, not averaged up to it), else the task's default. Read off the analysis (nothing recomputed); the
report page opens with it and the run's console ends with it (`headline.txt`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.report.analysis import Analysis, FigureContext
from harness.report.families import family_of


def law_view(ctx: FigureContext) -> Analysis:
    """The definition that tests the law: a per-position one if present, else the task's default."""
    return next((v for v in ctx.analyses.values() if v.spec.source == "positions"), ctx.default)


def _tokens(x: Any) -> str:
    return f"{float(x):,.0f}" if x is not None and math.isfinite(float(x)) else "-"


def _ratio(value: Any, limit: Any) -> float:
    try:
        value, limit = float(value), float(limit)
    except (TypeError, ValueError):
        return math.nan
    return value / limit if math.isfinite(value) and math.isfinite(limit) and limit > 0 else math.nan


def _sentence(row: pd.Series, name: str) -> str:
    """One sentence a reader can act on; never a conclusion the row does not support."""
    warning = row.get("warning")
    if isinstance(warning, str) and warning and not math.isfinite(float(row["measured_limit"])):
        return f"no measured length: {warning}"
    value = float(row["measured_limit"])
    if not math.isfinite(value):
        note = row.get("note")
        return f"no measured length ({note})" if isinstance(note, str) and note else "no measured length"
    censored = bool(row["measured_censored"])
    liu, men = _ratio(value, row["predicted_limit"]), _ratio(value, row["retrieval_bound"])
    where = (f"holds to the longest length measured, {_tokens(value)}" if censored
             else f"limit at {_tokens(value)}")
    if math.isfinite(float(row.get("measured_ci_low", math.nan))) and not censored:
        where += f" [{_tokens(row['measured_ci_low'])}, {_tokens(row['measured_ci_high'])}]"
    at_least = "at least " if censored else ""

    def times(ratio: float, limit: Any) -> str:
        """'1.21x [1.11, 1.34]': the ratio and, where the length has a CI, the CI divided by the limit."""
        lo, hi = _ratio(row.get("measured_ci_low"), limit), _ratio(row.get("measured_ci_high"), limit)
        band = f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) and math.isfinite(hi) and not censored else ""
        return f"{at_least}{ratio:.2f}x{band}"

    parts = [f"{name} {where}"]
    parts.append(f"{times(liu, row['predicted_limit'])} Liu's limit ({_tokens(row['predicted_limit'])})"
                 if math.isfinite(liu) else f"Liu's law makes no prediction ({row['regime'] or 'no regime'})")
    if math.isfinite(men):
        parts.append(f"{times(men, row['retrieval_bound'])} the retrieval bound "
                     f"({_tokens(row['retrieval_bound'])})")
    sentence = ": ".join(parts[:1]) + ", " + ", ".join(parts[1:])
    if isinstance(warning, str) and warning:
        sentence += f" (warning: {warning})"
    return sentence


def _fallback(ctx: FigureContext, view: Analysis, law_row: pd.Series) -> str:
    """Where the law's definition measured nothing for the setting, the sentence of the first other definition
    that did: the task's default (a base that breaks the model inside the per-position reference window still
    has a ppl@L length), else one on another metric (a score at chance at every length still has an answer
    log-prob length: passkey's, RULER's)."""
    setting = law_row["setting"]
    if math.isfinite(float(law_row["measured_limit"])):
        return ""
    others = [ctx.default] + [v for v in ctx.analyses.values() if v.spec.metric != view.spec.metric]
    for other in {id(o): o for o in others if o is not view}.values():
        if setting in other.settings.index and math.isfinite(float(other.settings.loc[setting,
                                                                                       "measured_limit"])):
            return f"; {_sentence(other.settings.loc[setting], other.spec.name)}"
    return ""


def headline(contexts: list[FigureContext]) -> pd.DataFrame:
    """One row per task (and model family) and setting: measured limit, both limits, ratios, the sentence."""
    rows = []
    for ctx in contexts:
        view = law_view(ctx)
        for _, row in view.settings.iterrows():
            model = row["model"] if isinstance(row["model"], str) else ""
            rows.append({
                "task": ctx.task + (f" ({ctx.family})" if ctx.family else ""), "setting": row["setting"],
                "measure": view.spec.key, "measured": float(row["measured_limit"]),
                "ci_low": float(row["measured_ci_low"]), "ci_high": float(row["measured_ci_high"]),
                "censored": row["measured_censored"], "liu": row["predicted_limit"],
                "ratio_liu": _ratio(row["measured_limit"], row["predicted_limit"]),
                "retrieval_bound": row["retrieval_bound"],
                "ratio_retrieval": _ratio(row["measured_limit"], row["retrieval_bound"]),
                "n_samples": row["n_samples"],
                "sentence": _sentence(row, view.spec.name) + _fallback(ctx, view, row),
                # what the verdict (verdict.py) reads: the family, the premise, and why a length is missing
                "task_name": ctx.task, "family": family_of(model),
                "measure_name": view.spec.name, "regime": row["regime"],
                "untuned": bool(row.get("law_assumes_finetune", False)),
                "warning": row["warning"] if isinstance(row.get("warning"), str) else "",
                "note": row["note"] if isinstance(row.get("note"), str) else "",
            })
    return pd.DataFrame(rows)


def headline_text(table: pd.DataFrame) -> str:
    """The console's closing lines: per task, one sentence per setting."""
    lines = []
    for task, group in table.groupby("task", sort=False):
        lines.append(f"{task}:")
        lines += [f"  {r.setting}: {r.sentence}" for r in group.itertuples()]
    return "\n".join(lines)
