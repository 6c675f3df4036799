"""Tasks the report reads together (a figure module's `GROUP`, registry.TaskGroup): RULER's families.

Per model family, the members' FigureContexts (each task analysed on its own, as any task) are gathered into
one GroupContext: their mean scores per length (`scores`, read off each member's default definition's table)
and, per setting and member, the group's definition's measured length with its status (`lengths`, read off
the member's summary). From these come the group's headline line per setting (the member that fails first,
by the group's definition, else by its fallback), its section's table and its figures. Nothing here
recomputes a curve or a CI: everything is read off the analysis.

Status of a (member, setting) by one definition: `measured` (a crossing), `holds` (censored at the longest
length), `below` (above chance, but already below the definition's bar at the reference lengths: its length is
shorter than the grid's reference lengths, so it fails first), `chance` (the reference is at chance: no
length), `insufficient` (fewer samples than the evidence bar), `none` (any other reason: no data, a peer).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.report.analysis import Analysis, FigureContext
from harness.report.base import finite_number as _num
from harness.report.headline import _ratio, _sentence, _tokens
from harness.report.registry import TaskGroup

__all__ = ["GroupContext", "RANKED", "gather", "with_group_rows"]

RANKED = ("below", "measured", "holds")  # the statuses that order members by how early they fail
LENGTH_COLUMNS = ["task", "setting", "measure", "status", "measured_limit", "measured_ci_low",
                  "measured_ci_high", "measured_censored", "reference_value", "threshold_value",
                  "chance_value", "n_samples", "predicted_limit", "retrieval_bound", "rank", "reason"]


@dataclass
class GroupContext:
    """One group of tasks in one model family: what its section, headline line and figures read.

    members: the tasks' FigureContexts, in the group's order; order / colors: the settings, as every figure;
    scores: task, setting, length, mean, n (each member's default definition per length);
    lengths: LENGTH_COLUMNS, one row per member, setting and definition (the group's and its fallback):
    the measured length, its status and rank (0 fails first; NaN: no length to rank).
    """

    group: TaskGroup
    family: str
    members: list[FigureContext]
    order: list[str]
    colors: dict[str, Any]
    ci: float
    min_samples: int
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    lengths: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def task(self) -> str:
        """The name figure files and notes use for the group (FigureContext.task's counterpart)."""
        return self.group.name.lower()

    @property
    def tasks(self) -> list[str]:
        return [ctx.task for ctx in self.members]

    def view(self, key: str) -> Analysis | None:
        """The first member's definition `key` (its `settings` carry each setting's law block, which every
        member shares), None when no member has it (or for key '')."""
        return next((ctx.analyses[key] for ctx in self.members if key in ctx.analyses), None)

    def ranked(self, setting: str, key: str) -> pd.DataFrame:
        """The members' rows of definition `key` for a setting, the one that fails first first."""
        rows = self.lengths[(self.lengths["setting"] == setting) & (self.lengths["measure"] == key)]
        within = rows["reference_value"].where(rows["status"] == "below", rows["measured_limit"])
        return rows.assign(_within=within.astype(float)).sort_values(
            ["rank", "_within"], na_position="last", kind="stable").drop(columns="_within")


def status_of(row: pd.Series, spec: Any, min_samples: int) -> tuple[str, str]:
    """(status, reason) of one summary row (see the module)."""
    value, ref = _num(row.get("measured_limit")), _num(row.get("reference_value"))
    chance, threshold = _num(row.get("chance_value")), _num(row.get("threshold_value"))
    warning = row.get("warning") if isinstance(row.get("warning"), str) else ""
    if math.isfinite(value):
        return ("holds" if bool(row.get("measured_censored")) else "measured"), ""
    better = (lambda a, b: a > b) if spec.higher_is_better else (lambda a, b: a < b)
    if math.isfinite(chance) and math.isfinite(ref) and not better(ref, chance):
        return "chance", f"at chance: best {ref:.3g} at the reference lengths, chance {chance:.3g}"
    samples = _num(row.get("n_samples"))
    if math.isfinite(samples) and 0 < samples < min_samples:
        return "insufficient", f"{samples:.0f} samples per length, fewer than {min_samples}"
    if math.isfinite(ref) and math.isfinite(threshold) and better(threshold, ref):
        return "below", f"best {ref:.3g} at the reference lengths, below {threshold:g}"
    note = row.get("note") if isinstance(row.get("note"), str) else ""
    return "none", warning or note or "no data"


def _lengths(members: list[FigureContext], keys: Sequence[str], min_samples: int) -> pd.DataFrame:
    rows = []
    for ctx in members:
        for key in keys:
            view = ctx.analyses.get(key)
            if view is None:
                continue
            for _, row in view.settings.iterrows():
                status, reason = status_of(row, view.spec, min_samples)
                rows.append({**{c: row.get(c) for c in LENGTH_COLUMNS if c in row}, "task": ctx.task,
                             "measure": key, "status": status, "reason": reason,
                             "rank": float(RANKED.index(status)) if status in RANKED else math.nan})
    return pd.DataFrame(rows, columns=LENGTH_COLUMNS)


def gather(contexts: list[FigureContext], groups: dict[str, TaskGroup]) -> list[GroupContext]:
    """One GroupContext per group and model family that has members among `contexts` ({task: its group})."""
    found: dict[tuple[str, str], list[FigureContext]] = {}
    for ctx in contexts:
        group = groups.get(ctx.task)
        if group is not None and group.measure in ctx.analyses:
            found.setdefault((group.name, ctx.family), []).append(ctx)
    out = []
    for (_, family), members in found.items():
        group = groups[members[0].task]
        rank = {task: k for k, task in enumerate(group.order)}
        members = sorted(members, key=lambda c: (rank.get(c.task, len(rank)), c.task))
        first = members[0]
        scores = pd.concat([ctx.default.table.assign(task=ctx.task) for ctx in members], ignore_index=True)
        scores = scores[scores["mean"].astype(float).notna()][["task", "setting", "length", "mean", "n"]]
        keys = [k for k in (group.measure, group.fallback) if k]
        out.append(GroupContext(group, family, members, first.order, first.colors, first.ci,
                                first.min_samples, scores.reset_index(drop=True),
                                _lengths(members, keys, first.min_samples)))
    return out


def _said(row: pd.Series) -> str:
    """A member's length in a list: '2,345 [2,100, 2,600]', '>= 4,096', 'below 0.856 at the reference'."""
    if row["status"] == "below":
        return f"{row['task']} below {_num(row['threshold_value']):g} already at the reference lengths"
    value = _tokens(row["measured_limit"])
    if row["status"] == "holds":
        return f"{row['task']} \u2265 {value}"
    lo, hi = _num(row["measured_ci_low"]), _num(row["measured_ci_high"])
    return f"{row['task']} {value}" + (f" [{_tokens(lo)}, {_tokens(hi)}]" if math.isfinite(lo) else "")


def _unranked(rows: pd.DataFrame) -> str:
    """'no length: qa_1 (at chance), cwe (3 samples per length, fewer than 5)'."""
    rest = rows[rows["rank"].isna()]
    if not len(rest):
        return ""
    return "no length: " + ", ".join(f"{r.task} ({r.reason})" for r in rest.itertuples())


def _label(gctx: GroupContext, key: str) -> str:
    """The rule in a few words; a threshold on the members' default metric names that metric ('RULER
    effective length (RULER score >= 0.856)')."""
    view = gctx.view(key)
    if view is None:
        return key
    default = gctx.members[0].default.spec
    if view.spec.rule == "threshold" and view.spec.metric == default.metric and view.spec is not default:
        sign = ">=" if view.spec.higher_is_better else "<="
        return f"{view.spec.name} ({default.name} {sign} {view.spec.param(*view.params):g})"
    return view.spec.label(*view.params)


def _line(gctx: GroupContext, setting: str, key: str) -> tuple[str, pd.Series | None]:
    """The sentence of definition `key` for a setting, and the row of the member that fails first (None when
    no member ranks)."""
    rows = gctx.ranked(setting, key)
    ranked = rows[rows["rank"].notna()]
    if not len(ranked):
        return "", None
    first = ranked.iloc[0]
    if first["status"] == "below":
        ref, chance = _num(first["reference_value"]), _num(first["chance_value"])
        opening = (f"{first['task']}, its best at the reference lengths ({ref:.3g}, chance {chance:.3g}) "
                   f"already below {_num(first['threshold_value']):g}")
    else:
        full = gctx.members[gctx.tasks.index(first["task"])].analyses[key].settings.loc[setting]
        opening = _sentence(full, str(first["task"]))
    then = [_said(r) for _, r in ranked.iloc[1:].iterrows()]
    parts = [f"by {_label(gctx, key)}, fails first: {opening}"]
    parts += [f"then {', '.join(then)}"] if then else []
    return "; ".join([*parts, _unranked(rows)]).strip("; "), first


def _group_row(gctx: GroupContext, setting: str, template: pd.Series) -> dict[str, Any]:
    """The headline row of a group for one setting (the columns headline.headline gives every row)."""
    group = gctx.group
    key = group.measure
    sentence, first = _line(gctx, setting, key)
    if first is None:
        reasons = _unranked(gctx.ranked(setting, key)) or "no data"
        sentence = f"no measured length by {_label(gctx, key)} ({reasons})"
        if group.fallback and gctx.view(group.fallback) is not None:
            fallback, first = _line(gctx, setting, group.fallback)
            if first is not None:
                key, sentence = group.fallback, f"{sentence}; {fallback}"
            else:
                why = _unranked(gctx.ranked(setting, group.fallback)).removeprefix("no length: ")
                sentence += f", nor by {_label(gctx, group.fallback)}" + (f" ({why})" if why else "")
    value = _num(first["measured_limit"]) if first is not None else math.nan
    n = len(gctx.members)
    below = first is not None and first["status"] == "below"
    return {
        **template.to_dict(), "task": group.name + (f" ({gctx.family})" if gctx.family else ""),
        "measure": key, "measured": value,
        "ci_low": _num(first["measured_ci_low"]) if first is not None else math.nan,
        "ci_high": _num(first["measured_ci_high"]) if first is not None else math.nan,
        "censored": bool(first["status"] == "holds") if first is not None else None,
        "ratio_liu": _ratio(value, template["liu"]),
        "ratio_retrieval": _ratio(value, template["retrieval_bound"]),
        "sentence": f"{n} {'family' if n == 1 else 'families'} ({', '.join(gctx.tasks)}): {sentence}",
        "task_name": group.name,
        "measure_name": _measure_name(gctx, key, first),
        "warning": "" if first is not None else sentence.split(": ", 1)[-1], "note": "",
        "group": group.name, "group_row": True,
        "clause": (f"{group.name}: {first['task']} fails first, its best at the reference lengths "
                   f"({_num(first['reference_value']):.3g}) already below {_num(first['threshold_value']):g}"
                   if below else "" if first is not None else _nothing(gctx, setting)),
    }


WHY = {"chance": "at chance", "insufficient": "under the evidence bar", "none": "without data"}


def _nothing(gctx: GroupContext, setting: str) -> str:
    """The verdict's clause where no member has a length by either definition: how many, and why."""
    group = gctx.group
    rows = gctx.ranked(setting, group.measure)
    counts = rows["status"].value_counts()
    why = ", ".join(f"{n} {WHY.get(str(status), str(status))}" for status, n in counts.items())
    nor = f", nor by {_label(gctx, group.fallback)}" if gctx.view(group.fallback) is not None else ""
    return f"{group.name}: no task has a length by {_label(gctx, group.measure)} ({why}){nor}"


def _measure_name(gctx: GroupContext, key: str, first: pd.Series | None) -> str:
    """What the verdict calls the group's length: who fails first, by which definition."""
    name, label = gctx.group.name, _label(gctx, key)
    if first is None:
        return f"{name} ({label})"
    if first["status"] == "holds":
        return f"{name} (every task holds by {label}; shortest {first['task']})"
    return f"{name} ({first['task']} fails first by {label})"


def with_group_rows(table: pd.DataFrame, groups: list[GroupContext]) -> pd.DataFrame:
    """The headline table with, per group and setting, the group's line before its members' rows (members
    carry `group`, so that the verdict reads the group's line instead of each of theirs)."""
    if not len(table) or not groups:
        return table
    table = table.assign(group="", group_row=False, clause="")
    rows = [r for _, r in table.iterrows()]
    out: list[dict[str, Any]] = []
    done: set[tuple[str, str]] = set()
    for row in rows:
        gctx = next((g for g in groups if row["task_name"] in g.tasks
                     and (g.family == "" or g.family == row["task"].removeprefix(row["task_name"])
                          .strip(" ()"))), None)
        if gctx is not None:
            key = (gctx.group.name + gctx.family, row["setting"])
            if key not in done:
                done.add(key)
                out.append(_group_row(gctx, row["setting"], row))
            row = row.copy()
            row["group"] = gctx.group.name
        out.append(row.to_dict())
    frame = pd.DataFrame(out)
    order = list(dict.fromkeys(frame["task"]))  # the group's line, then its members, each task together
    frame["_task"] = frame["task"].map(order.index)
    return frame.sort_values("_task", kind="stable").drop(columns="_task").reset_index(drop=True)


def length_table(gctx: GroupContext) -> pd.DataFrame:
    """The group section's table: per setting, its members by the group's definition, first to fail first."""
    rows = []
    for setting in gctx.order:
        for _, r in gctx.ranked(setting, gctx.group.measure).iterrows():
            censored = r["status"] == "holds"
            value = _num(r["measured_limit"])
            lo, hi = _num(r["measured_ci_low"]), _num(r["measured_ci_high"])
            shown = "" if not math.isfinite(value) else (
                f"\u2265 {_tokens(value)}" if censored else _tokens(value)
                + (f" [{_tokens(lo)}, {_tokens(hi)}]" if math.isfinite(lo) else ""))
            rows.append({"setting": setting, "task": r["task"], "measured [CI]": shown,
                         "measured / Liu": _fmt_ratio(value, r["predicted_limit"], censored),
                         "measured / retrieval": _fmt_ratio(value, r["retrieval_bound"], censored),
                         "best at reference": _num(r["reference_value"]), "chance": _num(r["chance_value"]),
                         "n_samples": r["n_samples"], "status": r["status"], "reason": r["reason"]})
    return pd.DataFrame(rows)


def _fmt_ratio(value: float, limit: Any, censored: bool) -> str:
    ratio = _ratio(value, limit)
    return "" if not math.isfinite(ratio) else ("\u2265 " if censored else "") + f"{ratio:.3g}"


def grid_lengths(gctx: GroupContext, setting: str) -> list[float]:
    """The lengths any member ran for a setting (the heatmap's columns)."""
    mine = gctx.scores[gctx.scores["setting"] == setting]
    return sorted(float(v) for v in mine["length"].unique())


def describe(gctx: GroupContext) -> str:
    """One sentence for the group's section: what orders the members and what a missing length means."""
    return (f"{len(gctx.members)} tasks of {gctx.group.name}, ordered per setting by "
            f"{_label(gctx, gctx.group.measure)}, the one that fails first leading: a task already below the "
            "bar at the reference lengths (above chance) first, then by measured length, censored ones "
            "(\u2265, never below the bar on the grid) last. A task at chance, or with fewer than "
            f"{gctx.min_samples} samples per length (the evidence bar, report --min-samples), gets no "
            "length.")
