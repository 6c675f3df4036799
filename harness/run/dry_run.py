"""`rope-harness run --dry-run`: the grid, what is left to run, and the planner's memory estimate; no weights.

One row per setting and task: cells, cells still to run (no ok record in the folder yet), lengths, the
largest estimate with its plan (the run's plan: the same planner and inputs, harness.factory.planner), and
how many cells the planner would record as oom under the memory budget, which it prints.
Per-cell lines follow with -v, or when the grid is small. A setting whose config cannot be read (a hub
model not in the local cache, offline) is listed without an estimate, marked; so are tasks whose data
only the hub has.
"""

from __future__ import annotations

import sys

from harness import factory
from harness.core.values import fmt_size
from harness.run.run_plan import RunPlan
from harness.run.suite import RunOptions

CELL_LINES = 60  # per-cell lines without -v up to this many cells


def _lengths(lengths: list[int]) -> str:
    return str(lengths[0]) if len(lengths) == 1 else f"{lengths[0]}..{lengths[-1]} ({len(lengths)})"


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 \
        else f"{seconds:.0f} s"


def _seconds(planner, task_plan, todo: list) -> float | None:
    """The estimated time of the cells still to run (the planner's passes over this machine's throughput);
    None where there is no estimate (no config, served, an accelerator)."""
    if planner is None or not todo:
        return None if planner is None else 0.0
    fits = [c for c in todo if planner(c.length, task_plan.task.generates).fits]  # refused cells take seconds
    return planner.seconds(task_plan.task.passes(task_plan.params, fits, planner.length_dependent))


def show(run: RunPlan, options: RunOptions) -> None:
    """Print the dry run (see the module docstring)."""
    rows, cells_out = [], []
    for prep in run.settings:
        planner = factory.planner(prep.setting, prep.config, options)
        for task_plan in prep.tasks.values():
            cells = task_plan.cells
            todo = set(run.todo(prep, task_plan))
            lengths = sorted({c.length for c in cells})
            row = {"setting": prep.label, "task": task_plan.name, "cells": len(cells), "todo": len(todo),
                   "lengths": _lengths(lengths) if lengths else "-",
                   "estimate": "no estimate (config not read)", "oom": 0,
                   "seconds": _seconds(planner, task_plan, [c for c in cells if c in todo])}
            # the run's plans: a prompt to generate after counts the cache kept for decoding
            plans = {n: planner(n, task_plan.task.generates) for n in lengths} if planner else {}
            if plans:
                longest = plans[lengths[-1]]
                row["estimate"] = (f"{longest}: the engine owns its memory" if prep.setting.served else
                                   f"{fmt_size(longest.estimate_bytes)} at {lengths[-1]} ({longest})")
                row["oom"] = sum(not plans[c.length].fits for c in cells)
            rows.append(row)
            for c in cells:
                cells_out.append((prep.label, task_plan.name, c, plans.get(c.length), c in todo))
    print(f"dry run of {options.suite or 'the run flags'} into {options.out}: no model is loaded, "
          "nothing written")
    width = max([11] + [len(r["task"]) for r in rows])
    print(f"{'setting':<28} {'task':<{width}} {'cells':>6} {'to run':>6} {'time':>7}  {'lengths':<18} "
          "largest estimate (plan)")
    for r in rows:
        oom = f"; {r['oom']} over the memory budget (recorded oom)" if r["oom"] else ""
        print(f"{r['setting'][:28]:<28} {r['task']:<{width}} {r['cells']:>6} {r['todo']:>6} "
              f"{_time(r['seconds']):>7}  {r['lengths']:<18} {r['estimate']}{oom}")
    total, todo = sum(r["cells"] for r in rows), sum(r["todo"] for r in rows)
    if options.verbose or total <= CELL_LINES:
        _cell_lines(cells_out)
    print(f"{total} cells ({total - todo} already recorded in {options.out}, {todo} to run)"
          + ("" if options.verbose or total <= CELL_LINES else "; per-cell lines: add -v"))
    for line in dict.fromkeys(factory.budget_line(p.setting, options) for p in run.settings
                              if not p.setting.served):
        print(line)
    _print_times(rows)
    for prep in run.settings:
        if prep.setting.served:
            print(f"{prep.label}: {factory.preview(prep.setting, prep.checkpoint, prep.longest)}")
    for note in dict.fromkeys(n for p in run.settings for n in p.notes):
        print(f"rope-harness: note: {note}", file=sys.stderr)


def _print_times(rows: list[dict]) -> None:
    """Per setting and in total, the estimated wall time of what is left to run, said to be an estimate."""
    per: dict[str, list] = {}
    for r in rows:
        per.setdefault(r["setting"], []).append(r["seconds"])
    known = {k: sum(v) for k, v in per.items() if None not in v}
    if not known:
        return
    parts = ", ".join(f"{k} {_time(v)}" for k, v in known.items()) if len(known) > 1 else ""
    unknown = f"; no estimate for {len(per) - len(known)} setting(s) (served, GPU, or config not read)" \
        if len(known) < len(per) else ""
    print(f"estimated wall time: {_time(sum(known.values()))}" + (f" ({parts})" if parts else "") + unknown
          + " -- an estimate: the planner's FLOPs over a throughput measured once on this machine (cached); "
          "prefix reuse and a busy machine make it off")


def _cell_lines(cells_out) -> None:
    print(f"\n{'setting':<28} {'task':<11} {'length':>7} {'depth':>6} {'sample':>6}  {'plan':<16} "
          f"{'estimate':>10}")
    for label, task, cell, plan, todo in cells_out:
        depth = "-" if cell.depth is None else f"{cell.depth:g}"
        state = "" if todo else "  (recorded)"
        if plan is None or not plan.estimate_bytes:  # not read, or served
            shown = f"{str(plan or '-'):<16} {'-':>10}"
        else:
            shown = f"{str(plan):<16} {fmt_size(plan.estimate_bytes):>10}"
            state += "" if plan.fits else "  (oom: exceeds the memory budget)"
        print(f"{label[:28]:<28} {task[:11]:<11} {cell.length:>7} {depth:>6} {cell.sample:>6}  "
              f"{shown}{state}")
    print()

