"""The report's first lines: one verdict per model family, real models first.

A family's verdict speaks for one of its settings, the one that tests the law best: a setting inside the
law's premise (not a base changed without fine-tuning) before one outside it, then the one with the most
tasks measured to a length that has a prediction and no warning, then the narrowest relative CI. For that
setting it gives both limits (Liu's extrapolation limit, Men's retrieval bound) and, per task, the measured
limit with its CI as a multiple of each, or why no length is measured. A family with several settings inside
the premise adds the spread of their measured / Liu ratios. Read off the headline table (headline.py), which
is read off the analysis: nothing here is recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.report.base import finite_number as _num
from harness.report.families import ZOO_FAMILY, real_first

__all__ = ["Verdict", "figure_preference", "pick_setting", "verdicts"]

RANGE_MIN_SETTINGS = 3  # fewer settings inside the law's premise than this: a spread of ratios says little
WITHHELD_SUFFIX = ": no length is measured"  # the analysis's warning ends so; the verdict says it first
LOSS_FIGURE = "loss_vs_position"  # figure names of the task modules' FIGURES (figures/<task>.py)
MVP_FIGURES = ("measured_vs_predicted_position_loss", "measured_vs_predicted")


@dataclass(frozen=True)
class Verdict:
    """One family's line: which family and setting it speaks for, how many settings the family has, the
    text."""

    family: str
    setting: str
    n_settings: int
    text: str
    figures: tuple[str, ...]  # figure names, most telling first (figure_preference)


def _tokens(value: Any) -> str:
    return f"{_num(value):,.0f}"


def _clean(row: pd.Series) -> bool:
    """A measured, uncensored limit with Liu's prediction and no warning: the law tested as it is meant."""
    return (math.isfinite(_num(row["measured"])) and not bool(row["censored"])
            and math.isfinite(_num(row["ratio_liu"])) and not row["warning"])


def _width(row: pd.Series) -> float:
    """The CI's width relative to the measured length (inf when there is none)."""
    value, lo, hi = _num(row["measured"]), _num(row["ci_low"]), _num(row["ci_high"])
    return (hi - lo) / value if math.isfinite(lo) and math.isfinite(hi) and value > 0 else math.inf


def pick_setting(rows: pd.DataFrame) -> str:
    """The setting a family's verdict speaks for (see the module): rows are the family's headline rows."""
    order = list(dict.fromkeys(rows["setting"]))

    def key(setting: str) -> tuple:
        mine = rows[rows["setting"] == setting]
        first = mine.iloc[0]  # its first task's row: the report's headline task where the setting has it
        return (bool(mine["untuned"].any()), -sum(_clean(r) for _, r in mine.iterrows()),
                -int(mine["measured"].apply(lambda v: math.isfinite(_num(v))).sum()), _width(first),
                order.index(setting))

    return min(order, key=key)


def _reason(row: pd.Series) -> str:
    """Why a task measured no length for the setting: its warning, else its note."""
    text = row["warning"] or row["note"] or "no data"
    return text.removesuffix(WITHHELD_SUFFIX)


def _clause(row: pd.Series) -> str:
    """One task's measured limit against both laws, or why there is none (a row's own `clause` where it has
    one: a group's line, groups.py)."""
    if isinstance(row.get("clause"), str) and row["clause"]:
        return row["clause"]
    name = str(row["measure_name"])
    value = _num(row["measured"])
    if not math.isfinite(value):
        return f"{name}, no length measured ({_reason(row)})"
    censored = bool(row["censored"])
    if censored:
        text = f"{name} holds to the longest length measured, \u2265 {_tokens(value)}"
    else:
        lo, hi = _num(row["ci_low"]), _num(row["ci_high"])
        band = f" [{_tokens(lo)}, {_tokens(hi)}]" if math.isfinite(lo) and math.isfinite(hi) else " (no CI)"
        text = f"{name} breaks at {_tokens(value)}{band}"
    at_least = "\u2265 " if censored else ""
    ratios = [f"{at_least}{_num(row[col]):.2f}x {law}" for col, law in (("ratio_liu", "Liu"),
                                                                          ("ratio_retrieval", "Men"))
              if math.isfinite(_num(row[col]))]
    text += (": " + ", ".join(ratios)) if ratios else ""
    return text + (" (with a warning, below)" if row["warning"] else "")


def _limits(row: pd.Series) -> str:
    """The setting's two limits, which every task's ratio refers to."""
    liu, men = _num(row["liu"]), _num(row["retrieval_bound"])
    said = (f"Liu's limit {_tokens(liu)} tokens" if math.isfinite(liu)
            else f"Liu's law makes no prediction ({row['regime'] or 'no regime'})")
    said += f", Men's retrieval bound {_tokens(men)}" if math.isfinite(men) else ", no retrieval bound"
    return said


def _tested(rows: pd.DataFrame) -> tuple[str, list[float]]:
    """The family's first task's measure and its measured / Liu ratios over the settings inside the law's
    premise that have an uncensored limit and a prediction."""
    task = rows["task_name"].iloc[0]
    first = rows[(rows["task_name"] == task) & ~rows["untuned"].astype(bool)]
    ratios = [_num(r["ratio_liu"]) for _, r in first.iterrows()
              if math.isfinite(_num(r["ratio_liu"])) and not bool(r["censored"])]
    return str(first["measure_name"].iloc[0]) if len(first) else "", ratios


def _spread(rows: pd.DataFrame) -> str:
    """' Over its N fine-tuned settings ...: a to b x Liu.', where enough settings test the law."""
    name, ratios = _tested(rows)
    if len(ratios) < RANGE_MIN_SETTINGS:
        return ""
    return (f" Over its {len(ratios)} fine-tuned settings with a {name} limit and a prediction: "
            f"{min(ratios):.2f}x to {max(ratios):.2f}x Liu.")


def figure_preference(rows: pd.DataFrame) -> tuple[str, ...]:
    """The figures that show a family's verdict best, most telling first: measured vs predicted where several
    settings test the law (one point each against y = x), else the loss per position (where the cliff sits
    between both limits)."""
    if len(_tested(rows)[1]) >= RANGE_MIN_SETTINGS:
        return (*MVP_FIGURES, LOSS_FIGURE)
    return (LOSS_FIGURE, *MVP_FIGURES)


def _own_lines(rows: pd.DataFrame) -> pd.DataFrame:
    """A setting's rows without those of a group's members: the group's line speaks for them (RULER's 13
    tasks make one clause)."""
    if "group" not in rows or "group_row" not in rows:
        return rows
    member = rows["group"].fillna("").astype(str).ne("") & ~rows["group_row"].fillna(False).astype(bool)
    return rows[~member]


def verdicts(table: pd.DataFrame) -> list[Verdict]:
    """One Verdict per model family of the headline table, real models first."""
    out = []
    if not len(table):
        return out
    for family in real_first(table["family"]):
        rows = table[table["family"] == family]
        setting = pick_setting(rows)
        mine = _own_lines(rows[rows["setting"] == setting])
        n = rows["setting"].nunique()
        name = "the zoo" if family == ZOO_FAMILY else (family or setting)
        which = f"{setting}, 1 of its {n} settings" if n > 1 else setting
        text = (f"{name}: {which} ({_limits(mine.iloc[0])}): "
                + "; ".join(_clause(r) for _, r in mine.iterrows()) + "." + _spread(rows))
        out.append(Verdict(family, setting, n, text, figure_preference(rows)))
    return out
