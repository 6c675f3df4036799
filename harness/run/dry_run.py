"""`rope-harness run --dry-run`: the grid, what is left to run, and the planner's memory estimate; no weights.

One row per setting and task: cells, cells still to run (no ok record in the folder yet), lengths, the
largest estimate with its plan, and how many cells the planner would record as oom under --max-memory.
Per-cell lines follow with -v, or when the grid is small. A setting whose config cannot be read (a hub
model not in the local cache, offline) is listed without an estimate, marked; so are tasks whose data
only the hub has.
"""

from __future__ import annotations

import sys
from typing import Any

from harness.core.values import fmt_size
from harness.model import models
from harness.run.run_plan import RunPlan, SettingPlan
from harness.run.suite import RunOptions

CELL_LINES = 60  # per-cell lines without -v up to this many cells


def _planner(prep: SettingPlan, options: RunOptions):
    """length -> Plan for this setting (memoised: the estimate depends on the length only), or None."""
    if prep.setting.served:  # the engine owns its memory: no estimate
        from harness.serving.backend import ServedPlan, engine_label

        served = ServedPlan(engine_label(prep.setting.serve))
        return lambda length: served
    if prep.config is None:
        return None
    import torch
    from transformers import AutoModelForCausalLM

    from harness.engine.planner import make_plan

    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(prep.config).parameters())
    dtype = models.pick_dtype(prep.setting.dtype, models.pick_device(prep.setting.device))
    plans: dict[int, Any] = {}

    def plan(length: int):
        if length not in plans:
            plans[length] = make_plan(prep.config, length, dtype=dtype, attn=prep.setting.attn or "sdpa",
                                      n_params=n_params, max_memory=options.max_memory,
                                      chunk_size=options.chunk_size, strategy=options.strategy)
        return plans[length]

    return plan


def _lengths(lengths: list[int]) -> str:
    return str(lengths[0]) if len(lengths) == 1 else f"{lengths[0]}..{lengths[-1]} ({len(lengths)})"


def show(run: RunPlan, options: RunOptions) -> None:
    """Print the dry run (see the module docstring)."""
    rows, cells_out = [], []
    for prep in run.settings:
        plan = _planner(prep, options)
        for task_plan in prep.tasks.values():
            cells = task_plan.cells
            todo = set(run.todo(prep, task_plan))
            lengths = sorted({c.length for c in cells})
            row = {"setting": prep.label, "task": task_plan.name, "cells": len(cells), "todo": len(todo),
                   "lengths": _lengths(lengths) if lengths else "-",
                   "estimate": "no estimate (config not read)", "oom": 0}
            if plan is not None and lengths:
                longest = plan(lengths[-1])
                row["estimate"] = (f"{longest}: the engine owns its memory" if prep.setting.served else
                                   f"{fmt_size(longest.estimate_bytes)} at {lengths[-1]} ({longest})")
                row["oom"] = sum(not plan(c.length).fits for c in cells)
            rows.append(row)
            for c in cells:
                cells_out.append((prep.label, task_plan.name, c, plan(c.length) if plan else None, c in todo))
    print(f"dry run of {options.suite or 'the run flags'} into {options.out}: no model is loaded, "
          "nothing written")
    print(f"{'setting':<28} {'task':<11} {'cells':>6} {'to run':>6}  {'lengths':<18} largest estimate (plan)")
    for r in rows:
        oom = f"; {r['oom']} over --max-memory (recorded oom)" if r["oom"] else ""
        print(f"{r['setting'][:28]:<28} {r['task'][:11]:<11} {r['cells']:>6} {r['todo']:>6}  "
              f"{r['lengths']:<18} {r['estimate']}{oom}")
    total, todo = sum(r["cells"] for r in rows), sum(r["todo"] for r in rows)
    if options.verbose or total <= CELL_LINES:
        _cell_lines(cells_out)
    print(f"{total} cells ({total - todo} already recorded in {options.out}, {todo} to run)"
          + ("" if options.verbose or total <= CELL_LINES else "; per-cell lines: add -v"))
    for prep in run.settings:
        if prep.setting.served:
            print(_served_line(prep))
    for note in dict.fromkeys(n for p in run.settings for n in p.notes):
        print(f"rope-harness: note: {note}", file=sys.stderr)


def _served_line(prep: SettingPlan) -> str:
    """What a served setting will start (or use) and check."""
    from harness.serving.backend import SERVED_HEADROOM, launch_preview
    from harness.serving.probe import PROBE_LENGTH

    setting = prep.setting
    longest = prep.longest
    if setting.server_urls:
        where = f"uses {', '.join(setting.server_urls)}"
    else:
        where = "launches " + launch_preview(prep.checkpoint, setting.serve, longest + SERVED_HEADROOM,
                                             setting.tensor_parallel, setting.data_parallel)
    probe = (f"then probes {min(PROBE_LENGTH, longest)} tokens against the in-process model (CPU, float32)"
             if setting.probe else "no probe (--no-probe)")
    return f"{prep.label}: {where}; {probe}"


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
            state += "" if plan.fits else "  (oom: exceeds --max-memory)"
        print(f"{label[:28]:<28} {task[:11]:<11} {cell.length:>7} {depth:>6} {cell.sample:>6}  "
              f"{shown}{state}")
    print()

