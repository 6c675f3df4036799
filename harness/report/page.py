"""The report page's content as Blocks (render.py turns them into report.md and report.html).

Order: the first screen (`opening_blocks`: one verdict per model family, real models first, and the first
family's most telling figure), runs and their provenance (run.json: command, commit, versions, device,
dates), then one section per task, the headline perplexity first: its definitions, the law block of every
setting (both limits: Liu's predicted limit and Men's retrieval bound), warnings for settings whose measured
length would mislead, a compact table per measured-length definition (measured [CI], ratios to both limits,
the measured critical dimension, the reason where a value is missing), the figures, and the per-length
tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.values import safe_name
from harness.report.analysis import Analysis, FigureContext
from harness.report.base import NoData, NotApplicable, fmt_base, fmt_length
from harness.report.base import finite_number as _num
from harness.report.families import family_of
from harness.report.groups import GroupContext, describe, length_table
from harness.report.load import RunRecords
from harness.report.registry import FigureFn
from harness.report.render import Block, render_figure
from harness.report.verdict import Verdict, verdicts

HEADLINE_TASK = "perplexity"


def task_order(tasks: list[str]) -> list[str]:
    """The headline perplexity task first, the others in name order."""
    return sorted(tasks, key=lambda t: (t != HEADLINE_TASK, t))


def _tokens(value: Any) -> str:
    number = _num(value)
    return f"{number:,.0f}" if math.isfinite(number) else ""


def with_ci(value: Any, lo: Any, hi: Any, censored: Any = False, digits: int | None = None) -> str:
    """'1,297 [1,144, 1,451]', '>= 8,192' (censored: a lower bound), '' when missing."""
    def show(x: float) -> str:
        return f"{x:,.0f}" if digits is None else f"{x:.{digits}f}"

    v, a, b = _num(value), _num(lo), _num(hi)
    if not math.isfinite(v):
        return ""
    if _censored(censored):
        return f"\u2265 {show(v)} (censored)"
    return show(v) + (f" [{show(a)}, {show(b)}]" if math.isfinite(a) and math.isfinite(b) else "")


def provenance_items(loaded: RunRecords) -> list[str]:
    """One line per run from its run.json: command, suite, commit, versions, device, start and end."""
    items = []
    for name, path, _ in loaded.runs:
        info = loaded.run_info.get(name) or {}
        if not info:
            items.append(f"{name}: no run.json in {path} (no provenance recorded)")
            continue
        command = info.get("command")
        command = "rope-harness " + " ".join(map(str, command)) if isinstance(command, list) else str(command)
        versions = info.get("versions") or {}
        shown = ", ".join(f"{k} {versions[k]}" for k in ("rope-harness", "torch", "transformers", "python")
                          if versions.get(k))
        device = str(info.get("device") or "unknown device")
        cuda = info.get("torch_cuda")
        device += f", CUDA {cuda}" if cuda else (", no CUDA" if info.get("cuda_available") is False else "")
        commit = str(info.get("git_commit") or "unknown")[:12]
        suite = f" ({info['suite']})" if info.get("suite") else ""
        when = " to ".join(str(info[k]) for k in ("started", "ended") if info.get(k))
        items.append(f"{name}: `{command}`{suite}; commit {commit}; {shown or 'versions not recorded'}; "
                     f"device {device}; {when or 'date not recorded'}")
        items += [served_item(label, s) for label, s in (info.get("settings") or {}).items()
                  if isinstance(s, dict) and s.get("engine")]
    return items


def served_item(label: str, setting: dict[str, Any]) -> str:
    """A served setting: its engine, the command that launched it (or its servers) and the probe's verdict."""
    how = f"`{setting['serve_command']}`" if setting.get("serve_command") else ", ".join(
        setting.get("server_urls") or []) or "no server reached"
    gap, without = _num(setting.get("probe_gap")), _num(setting.get("probe_gap_without_override"))
    measured = f"; mean log-prob gap {gap:.3f} nats to the in-process model" if math.isfinite(gap) else ""
    measured += f", {without:.3f} without the override" if math.isfinite(without) else ""
    version = f" {setting['engine_version']}" if setting.get("engine_version") else ""
    return (f"{label}: served by {setting['engine']}{version}: {how}; probe: "
            f"{setting.get('probe_verdict') or 'not run'}{measured}")


def law_table(ctx: FigureContext) -> pd.DataFrame:
    """One row per setting: its law inputs and both limits (the task's default definition carries them)."""
    rows = ctx.default.settings
    out = pd.DataFrame({
        "setting": rows["setting"], "rope_type": rows["rope_type"],
        "rope_theta": [fmt_base(v) for v in rows["rope_theta"]],
        "pretrain_base": [fmt_base(v) for v in rows["pretrain_base"]],
        "rotary_dim": [_tokens(v) for v in rows["rotary_dim"]],
        "train_len": [_tokens(v) for v in rows["train_len"]],
        "tune_len": [_tokens(v) for v in rows["tune_len"]],
        "regime": rows["regime"], "d_extra (Liu)": [_tokens(v) for v in rows["critical_dim"]],
        "predicted limit (Liu)": [_tokens(v) for v in rows["predicted_limit"]],
        "retrieval bound (Men)": [_tokens(v) for v in rows["retrieval_bound"]],
        "law inputs from": rows.get("law_inputs_from", ""),
    })
    if set(out["rope_type"].fillna("default")) == {"default"}:
        out = out.drop(columns="rope_type")
    return out.reset_index(drop=True)


def _censored(flag: Any) -> bool:
    return flag is not None and not isinstance(flag, float) and bool(flag)


def _ratio(value: Any, limit: Any, censored: Any = False) -> str:
    """measured / limit to 3 digits, '>= r' when the measured length is censored."""
    v, limit = _num(value), _num(limit)
    if not (math.isfinite(v) and math.isfinite(limit) and limit > 0):
        return ""
    return ("\u2265 " if _censored(censored) else "") + f"{v / limit:.3g}"


def measured_table(view: Analysis) -> pd.DataFrame:
    """One row per setting (and rule parameter): measured [CI], ratios to both limits, d_measured, reason."""
    s = view.summary
    params = [c for c in ("factor", "delta", "threshold_value") if c in s and s[c].nunique() > 1]
    out = pd.DataFrame({"setting": s["setting"]})
    for c in params:
        out[c] = s[c]
    measured = zip(s["measured_limit"], s["measured_ci_low"], s["measured_ci_high"], s["measured_censored"],
                   strict=True)
    out["measured [CI]"] = [with_ci(*r) for r in measured]
    for column, limit in (("measured / Liu", "predicted_limit"), ("measured / retrieval", "retrieval_bound")):
        out[column] = [_ratio(*r) for r in zip(s["measured_limit"], s[limit], s["measured_censored"],
                                               strict=True)]
    dims = [with_ci(*r, digits=1) for r in zip(s["measured_critical_dim"], s["measured_critical_dim_ci_low"],
                                                s["measured_critical_dim_ci_high"],
                                                s["measured_critical_dim_censored"], strict=True)]
    if any(dims):
        out["d_measured [CI]"] = dims
    if "chance_value" in s and pd.to_numeric(s["chance_value"], errors="coerce").notna().any():
        out["chance"] = s["chance_value"]
    out["n_samples"] = s["n_samples"]
    out["n_failed"] = s["n_failed"]
    out["note"] = [n if isinstance(n, str) else "" for n in s["note"]]
    return out.reset_index(drop=True)


def warning_blocks(ctx: FigureContext) -> list[Block]:
    """A warning per distinct (definition, text), naming its settings."""
    found: dict[tuple[str, str], list[str]] = {}
    for view in ctx.analyses.values():
        for setting, text in zip(view.summary["setting"], view.summary["warning"], strict=True):
            if isinstance(text, str) and text:
                found.setdefault((view.spec.key, text), [])
                if setting not in found[(view.spec.key, text)]:
                    found[(view.spec.key, text)].append(setting)
    return [Block("warn", f"{', '.join(settings)} (`{key}`): {text}")
            for (key, text), settings in found.items()]


def caption(fn: FigureFn, name: str) -> str:
    """A figure's caption: its docstring's first paragraph on one line (else its name), so that a long
    caption can wrap in the source."""
    import inspect

    doc = inspect.getdoc(fn) or name
    return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())


def figure_file(ctx: FigureContext, name: str) -> str:
    """The PNG file of a task's figure `name`: one per task and model family."""
    return f"{ctx.task}_{safe_name(ctx.family, 'model') + '_' if ctx.family else ''}{name}.png"


def _figure_blocks(ctx: FigureContext, figures: dict[str, FigureFn], tmp: Path, notes: list[str],
                   log: Callable[[str], None]) -> list[Block]:
    blocks = []
    for name, fn in figures.items():
        filename = figure_file(ctx, name)
        try:
            extra = render_figure(fn, ctx, tmp / filename)
        except NotApplicable:
            continue
        except NoData as exc:
            notes.append(f"figure {ctx.task}/{name} skipped: {exc}")
            continue
        except Exception as exc:  # a broken figure must not take the tables down with it
            from harness.core.errors import one_line

            message = f"figure {ctx.task}/{name} failed: {one_line(exc)}"
            notes.append(message)
            log(message)
            continue
        blocks.append(Block("img", filename, " ".join(t for t in (caption(fn, name), extra) if t)))
    return blocks


SHOWN_FIGURES = 1  # a task's first figure stays open; the rest, like the tables, one click away


def _per_length(ctx: FigureContext, view: Analysis, title: str) -> list[Block]:
    table = view.table[view.table["mean"].astype(float).notna()]
    pivot = table.pivot_table(index="setting", columns="length", values="mean", aggfunc="first")
    if not len(pivot):
        return []
    pivot = pivot.reindex([s for s in ctx.order if s in pivot.index])
    pivot.columns = [fmt_length(c) for c in pivot.columns]
    return [Block("p", title), Block("table", pivot.reset_index())]


def _evidence_items(ctx: FigureContext) -> list[str]:
    """The bar a measured length must clear: the chance level per definition (a reference at chance gets no
    length) and the samples per length (report --min-samples)."""
    items = []
    for view in ctx.analyses.values():
        chance = pd.to_numeric(view.summary.get("chance_value"), errors="coerce").dropna() \
            if "chance_value" in view.summary else pd.Series(dtype=float)
        if not len(chance):
            continue
        source = f"the records' `{view.spec.chance_column}`, mean per setting" if view.spec.chance_column \
            else "fixed"
        low, high = chance.min(), chance.max()
        shown = f"{low:.4g}" if low == high else f"{low:.4g} to {high:.4g}"
        items.append(f"chance level of `{view.spec.key}`: {shown} ({source}); a best reference value at or "
                     "below it gets no length")
    items.append(f"evidence bar: at least {ctx.min_samples} samples per length (report --min-samples), "
                 "else no length is claimed")
    return items


def task_blocks(ctx: FigureContext, figures: dict[str, FigureFn], tmp: Path, notes: list[str],
                log: Callable[[str], None]) -> list[Block]:
    """One task's section (figures drawn into `tmp`; a skipped or failed figure goes to `notes`)."""
    blocks = [Block("h2", f"Task: {ctx.task}" + (f" ({ctx.family})" if ctx.family else ""))]
    views = list(ctx.analyses.values())
    definitions = list(dict.fromkeys(f"{v.spec.name}: {v.spec.description}" for v in views
                                     if v.spec.description))
    definitions += [f"measured extrapolation length `{view.spec.key}`"
                    + (" (default)" if view is views[0] else "")
                    + f": {view.spec.definition(*view.params)}" for view in views]
    definitions += _evidence_items(ctx)
    definitions += [f"CIs: {100 * ctx.ci:g}% percentile bootstrap over samples (whole samples resampled)",
                    "predicted limit: Liu et al. (ICLR 2024) scaling law from each setting's law inputs "
                    "(rotary_dim, train_len, tune_len, pretrain_base, rope_theta) - harness/law/liu.py",
                    "retrieval bound: Men et al. (NeurIPS 2024), the first distance m where B(m) = sum_n "
                    "cos(m theta_n) < 0 for the evaluated base - harness/law/men.py",
                    "d_measured: the dimension whose period is the measured length, d ln(T / 2 pi) / "
                    "ln(base) (Liu's larger-base limit solved for d, no ceiling); next to d_extra; a lower "
                    "bound when the length is censored"]
    blocks += warning_blocks(ctx)
    blocks += [Block("details", "Definitions and each setting's law inputs and limits"),
               Block("ul", definitions), Block("table", law_table(ctx)), Block("end", "")]
    figure_blocks = _figure_blocks(ctx, figures, tmp, notes, log)
    blocks += figure_blocks[:SHOWN_FIGURES]
    blocks.append(Block("details", "Measured lengths per definition (tables)"))
    for view in views:
        label = view.spec.label(*view.params)
        blocks += [Block("p", f"Measured extrapolation length `{view.spec.key}` ({label}):"),
                   Block("table", measured_table(view))]
        if not view.summary["measured_limit"].astype(float).notna().any():
            reasons = sorted({n for n in view.summary["note"] if isinstance(n, str) and n}) or ["no data"]
            blocks.append(Block("p", f"No measured `{view.spec.key}` length for any setting: "
                                + "; ".join(reasons) + "."))
    summary = ctx.default.summary
    flagged = summary[summary["law_assumes_finetune"].astype(bool)]["setting"].unique()
    if len(flagged):
        blocks.append(Block("p", "Base changed at evaluation time only (law_assumes_finetune): "
                            + ", ".join(flagged) + ". The law's prediction assumes fine-tuning at tune_len."))
    blocks.append(Block("end", ""))
    if figure_blocks[SHOWN_FIGURES:]:
        blocks += [Block("details", f"{len(figure_blocks) - SHOWN_FIGURES} more figure(s)"),
                   *figure_blocks[SHOWN_FIGURES:], Block("end", "")]
    per_length = _per_length(ctx, ctx.default, f"{ctx.default.spec.name} per length (mean over samples; CIs "
                                               "in table.csv):")
    for view in ctx.extras.values():
        if view.spec.source == "records":
            per_length += _per_length(ctx, view, f"{view.spec.name} per length (mean over samples; CIs in "
                                                 "table.csv):")
    if per_length:
        blocks += [Block("details", "Values per length"), *per_length, Block("end", "")]
    return blocks


def context_family(ctx: FigureContext) -> str:
    """The model family of a task's settings (ctx.family is '' where the task holds one family only)."""
    if ctx.family:
        return ctx.family
    models = ctx.default.settings["model"].dropna() if len(ctx.default.settings) else []
    return family_of(str(models.iloc[0])) if len(models) else ""


def _top_figure(found: list[Verdict], contexts: list[FigureContext], sections: list[Block],
                groups: list[GroupContext] = ()) -> Block | None:
    """The most telling figure of the first family that has one, taken out of its task's section (a line
    there says where it went), so that the page shows it once; a group's figure (RULER's heatmap) where none
    of the verdict's figures was drawn."""
    for verdict in found:
        mine: list[Any] = [ctx for ctx in contexts if context_family(ctx) == verdict.family]
        mine += [g for g in groups if context_family(g.members[0]) == verdict.family]
        names = [*verdict.figures, *(name for g in groups for name in g.group.figures)]
        for name in names:
            for ctx in mine:
                file = figure_file(ctx, name)
                at = next((k for k, b in enumerate(sections) if b.kind == "img" and b.content == file), None)
                if at is not None:
                    caption = sections[at].caption
                    sections[at] = Block("p", f"Figure {file}: shown at the top of the report, under the "
                                              "verdict.")
                    family = f" ({ctx.family})" if ctx.family else ""
                    return Block("img", file, f"{ctx.task}{family}: {caption}")
    return None


def opening_blocks(answer: pd.DataFrame, contexts: list[FigureContext], sections: list[Block],
                   groups: list[GroupContext] = ()) -> list[Block]:
    """The report's first screen: one verdict per model family (verdict.py), real models first, then the
    first family's most telling figure, moved up from `sections` (the task sections, already drawn)."""
    found = verdicts(answer)
    if not found:
        return []
    ci = contexts[0].ci if contexts else 0.95
    blocks = [Block("h2", "Verdict"),
              Block("p", "Per model family, real models first, one setting (the one that tests the law best; "
                         "every setting under What was measured): its measured limit per task with its "
                         f"{100 * ci:g}% CI over samples, as a multiple of Liu et al.'s extrapolation limit "
                         "(Liu) and of Men et al.'s retrieval bound (Men)."),
              Block("ul", [v.text for v in found])]
    figure = _top_figure(found, contexts, sections, list(groups))
    return blocks + ([figure] if figure is not None else [])


def group_blocks(gctx: GroupContext, tmp: Path, notes: list[str], log: Callable[[str], None]) -> list[Block]:
    """A group's section (RULER's families together): which task fails first per setting, the table of their
    lengths by the group's definition, and the group's figures (drawn into `tmp`)."""
    family = f" ({gctx.family})" if gctx.family else ""
    blocks = [Block("h2", f"{gctx.group.name}: {len(gctx.members)} tasks together{family}"),
              Block("p", describe(gctx))]
    blocks += _figure_blocks(gctx, gctx.group.figures, tmp, notes, log)  # type: ignore[arg-type]
    table = length_table(gctx)
    if len(table):
        blocks += [Block("details", f"{gctx.group.name}: each task's length per setting (table)"),
                   Block("table", table), Block("end", "")]
    return blocks
