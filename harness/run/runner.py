"""Run plan -> records: per setting load the model once, then per task score its cells without an ok record.

Flow (docs/design.md): the run plan (harness.run.run_plan: settings, tasks, cells, the folder read once, the
refusal to mix experiments) is built before the run folder is touched; then per setting: load + verify the
model from the plan's checkpoint, and per task: this rank's cells without an ok last record -> groups ->
engine -> one record per cell (harness.run.records.build). The engine owns its fallbacks; a group that still
fails is recorded (oom / error) and the run goes on. The exit code is 0 only when every cell of the grid
(this rank's share) ends with an ok record.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import factory
from harness.core import heartbeat
from harness.core.errors import InputError, Refusal, one_line
from harness.core.values import fmt_size, safe_name
from harness.engine.memory_guard import address_space_limit, is_oom
from harness.run import records
from harness.run.distributed import rank_and_world, shard_cells
from harness.run.run_info import write_run_json
from harness.run.run_plan import RunPlan, SettingPlan, TaskPlan, folder_rope_hash
from harness.run.store import Store, keep_latest
from harness.run.suite import RunOptions
from tasks.base import Cell, RunContext, get_task

log = logging.getLogger("rope_harness")


@dataclass
class RunResult:
    counts: Counter  # this run's records by status, plus skipped (ok already) and retried (failed before)
    records: int  # records written now
    failed: int  # cells of the grid (this rank's) whose last record is not ok
    table: list[dict[str, Any]]
    # the law inputs given as flags, per setting: the report applies them (they are not in the identity)
    law: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    advice: str = ""  # what to do about cells the planner refused (refusal_advice)
    retryable: int = 0  # failed cells a rerun may heal (records without `retry: false`)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass
class _Progress:
    """The run's mutable state: counts, the folder's latest records (the plan's, updated as records are
    written), the grid of this rank's cell keys, and whether the folder is open."""

    plan: RunPlan
    store: Store
    options: RunOptions
    started: float
    warn: Callable[[str], None]
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    manifests: dict[str, Any] = field(default_factory=dict)
    grid: set[str] = field(default_factory=set)
    opened: bool = False

    def open(self) -> None:
        """Open the folder once there is work; records another run added since the plan was read count."""
        self.store.open()
        self.opened = True
        if self.store.signature() != self.plan.signature:  # another run wrote here since: read again
            self.latest = self.store.latest()
        self._write_run_json(None)

    def close(self) -> None:
        if self.opened:
            self._write_run_json(time.time())
            self.store.close()

    def append(self, record: dict[str, Any]) -> None:
        self.store.append("records", record)
        keep_latest(self.latest, record)
        self.counts[record["status"]] += 1

    def done(self, key: str) -> bool:
        return self.latest.get(key, {}).get("status") == "ok"

    def _write_run_json(self, ended: float | None) -> None:
        write_run_json(self.options, self.store, self.started, ended, self.manifests, self.plan.settings,
                       self.counts)


def run(plan: RunPlan, options: RunOptions, warn: Callable[[str], None]) -> RunResult:
    """Run every cell of this rank without an ok record; see the module docstring."""
    rank, world = rank_and_world()
    progress = _Progress(plan, Store(options.out, rank, world), options, time.time(), warn, dict(plan.latest))
    try:
        for prep in plan.settings:
            _run_setting(progress, prep, rank, world)
    finally:
        progress.close()
    after = progress.latest
    last = [after.get(key, {}) for key in progress.grid]
    failed = [r for r in last if r.get("status") != "ok"]
    return RunResult(progress.counts, sum(progress.counts[s] for s in records.STATUSES), len(failed),
                     summary_table(list(after.values())), plan.law_flags(), refusal_advice(failed),
                     sum(r.get("retry", True) is not False for r in failed))


def _run_setting(progress: _Progress, prep: SettingPlan, rank: int, world: int) -> None:
    """Open the setting's engine once (in-process or served: harness.factory), then run each of its tasks."""
    setting, checkpoint = prep.setting, prep.checkpoint
    log = progress.options.out / f"server-{safe_name(prep.label)}.log"
    with factory.opened(setting, checkpoint, progress.options, prep.longest, log, prep.label,
                        progress.warn) as opened:
        rope_hash = folder_rope_hash(progress.latest, progress.options.out, prep.label, opened.manifest)
        progress.manifests[prep.label] = {**opened.manifest, **opened.info, "model": setting.model,
                                          "fingerprint": opened.fingerprint}
        part = records.SettingPart(prep.label, setting.model, opened.manifest, rope_hash, opened.dtype,
                                   opened.attn, opened.fingerprint, prep.model_fingerprint, opened.fields)
        for task_plan in prep.tasks.values():
            _run_task(progress, prep, task_plan, opened, part, rank, world)


def _run_task(progress: _Progress, prep: SettingPlan, task_plan: TaskPlan, opened: factory.Opened,
              part: records.SettingPart, rank: int, world: int) -> None:
    plan, params = progress.plan, task_plan.params
    keyed = {c: plan.key(prep, task_plan, c, part.rope_hash) for c in task_plan.cells}
    owner = shard_cells(task_plan.cells, world, prep.index)
    mine = [c for c in task_plan.cells if owner[c] == rank]
    progress.grid.update(keyed[c] for c in mine)
    missing = [c for c in mine if not progress.done(keyed[c])]
    if missing and not progress.opened:
        progress.open()
        missing = [c for c in missing if not progress.done(keyed[c])]
    progress.counts["skipped"] += len(mine) - len(missing)
    progress.counts["retried"] += sum(keyed[c] in progress.latest for c in missing)  # their record failed
    if not missing:
        return
    engine = opened.engine
    ctx = RunContext(engine, prep.tokenizer, params, task_plan.state, part.manifest,
                     part.fields(), progress.store.append, progress.warn, run_dir=progress.options.out,
                     load_engine=factory.evaluator_loader(engine))
    fields = task_plan.fields
    task_part = records.TaskPart(task_plan.name, params.seed, fields["corpus"], fields["task_identity"])
    with address_space_limit(opened.budget, opened.device):
        for cell, outcome, metrics in _scored_cells(task_plan, ctx, opened, missing, progress.options,
                                                    prep.label):
            cell_part = records.CellPart(cell.length, cell.depth, cell.sample, keyed[cell],
                                         task_plan.sample_hash(cell))
            progress.append(records.build(part, task_part, cell_part, outcome, metrics))


def refusal_advice(failed: list[dict[str, Any]]) -> str:
    """What to do about failed cells a rerun fails again (records with `retry: false`): cells the planner
    refused, and cells an engine refused (a server that does not serve the asked setting); '' when none."""
    refused = [r for r in failed if r.get("status") == "oom" and str(r.get("error")).startswith("planner:")]
    others = [r for r in failed if r.get("retry") is False and r not in refused]
    lines = []
    if refused:
        shortest = min(r["length"] for r in refused)
        worst = max(refused, key=lambda r: r["length"])
        why = worst["error"].removeprefix("planner: ")
        lines.append(f"{len(refused)} cell(s) at L >= {shortest} exceed the memory budget by the planner's "
                     f"estimate ({why}); a rerun refuses them again: raise --max-memory to the estimate, "
                     "pass --strategy stream (one decoder layer at a time), or drop those lengths")
    if others:
        lines.append(f"{len(others)} cell(s) fail again on a rerun ({others[0]['error']}): fix the setting "
                     "first")
    return "\n".join(lines)


def _fitting_first(groups: list[list[Cell]], engine, generation: bool) -> Iterator[list[Cell]]:
    """Each group, split where its longest length does not fit the budget: the lengths that fit are scored
    (a shorter shared pass), the rest recorded as refused by the planner."""
    for group in groups:
        fit = [c for c in group if engine.plan(c.length, generation=generation).fits]
        yield from (part for part in (fit, [c for c in group if c not in fit]) if part)


def _group_outcome(task, ctx: RunContext, opened: factory.Opened,
                   group: list[Cell]) -> tuple[records.Outcome, list[dict[str, Any]] | None]:
    """Score one group: refused when the planner's estimate exceeds the budget, else the task scores it
    (the engine falls back on out-of-memory by itself); a failure is the group's outcome, not the run's."""
    longest = max(c.length for c in group)
    planned = opened.engine.plan(longest, generation=task.generates)
    if not planned.fits:
        need, budget = fmt_size(planned.estimate_bytes), fmt_size(opened.budget)
        return records.Outcome("oom", f"planner: {need} needed at L={longest} exceeds the memory budget "
                               f"{budget} ({opened.budget_source})", str(planned), retry=False), None
    try:
        return records.Outcome("ok", None, str(planned)), task.score_group(ctx, group)
    except Exception as exc:  # recorded per cell; the run goes on
        log.debug("cell failed", exc_info=True)
        return records.Outcome("oom" if is_oom(exc) else "error", one_line(exc), str(planned),
                               retry=not isinstance(exc, Refusal)), None


def _scored_cells(task_plan: TaskPlan, ctx: RunContext, opened: factory.Opened, cells: list[Cell],
                  options: RunOptions, label: str
                  ) -> Iterator[tuple[Cell, records.Outcome, dict[str, Any] | None]]:
    """(cell, outcome, metrics or None) for every cell, group by group, with a progress bar or line."""
    from tqdm import tqdm

    task, name = task_plan.task, task_plan.name
    tqdm.monitor_interval = 0  # no monitor thread: under the address-space cap a thread may fail to start
    terminal = sys.stderr.isatty()  # a redrawn bar only on a terminal: in a log its redraws pile up
    bar = tqdm(total=len(cells), desc=f"{label} {name}", unit="cell",
               disable=not options.progress or not terminal, file=sys.stderr, dynamic_ncols=True)
    tokens, done, start = 0, 0, time.time()
    for group in _fitting_first(task.groups(ctx, cells), opened.engine, task.generates):
        longest = max(c.length for c in group)
        with heartbeat.phase(f"{label} {name}: L={longest}, cells {done + 1}-{done + len(group)} of "
                             f"{len(cells)}"):
            outcome, metrics = _group_outcome(task, ctx, opened, group)
        for i, cell in enumerate(group):
            yield cell, outcome, metrics[i] if metrics is not None else None
        tokens += longest
        done += len(group)
        bar.update(len(group))
        bar.set_postfix(tok_s=f"{tokens / max(time.time() - start, 1e-9):.0f}")
        if options.progress and not terminal:  # one plain line per scored group instead
            print(f"{label} {name}: {done}/{len(cells)} cells, {time.time() - start:.0f} s",
                  file=sys.stderr, flush=True)
    bar.close()


def summary_table(latest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, task, length): n ok, failed, and the task's default measure aggregated over samples
    (its transform of the mean over ok cells: ppl@L is exp of the mean NLL). Under it, one row per further
    per-length measure with a console name whose metric some ok record carries (ppl_key with --key-tokens):
    ok = cells with a value, failed = 0 (the default row counts the failures once)."""
    measures: dict[str, tuple] = {}  # task -> its measures, looked up once per task, not per record
    groups: dict[tuple, dict[str, Any]] = {}
    for r in latest:  # the last record of each cell, as everywhere
        key = (r["setting"], r["task"], r["length"])
        g = groups.setdefault(key, {"setting": key[0], "task": key[1], "length": key[2], "ok": 0, "failed": 0,
                                    "values": [], "names": [], "further": {}})
        if r["status"] != "ok":
            g["failed"] += 1
            continue
        g["ok"] += 1
        if r["task"] not in measures:
            measures[r["task"]] = _task_measures(r["task"])
        spec, *rest = measures[r["task"]] or (None,)
        if spec is not None and r.get(spec.metric) is not None:
            g["values"].append(float(r[spec.metric]))
            g["names"].append(spec.console or r.get("metric") or spec.metric)
        for extra in rest:
            if extra.source == "records" and extra.console and extra.metric in r:
                got = g["further"].setdefault(extra.console, (extra, []))[1]
                if r[extra.metric] is not None:
                    got.append(float(r[extra.metric]))
    rows = []
    for g in sorted(groups.values(), key=lambda g: (g["setting"], g["task"], g["length"])):
        values, names, more = g.pop("values"), g.pop("names"), g.pop("further")
        spec = (measures.get(g["task"]) or _task_measures(g["task"]) or (None,))[0]
        g["metric"] = names[-1] if names else (spec.console if spec is not None else "") or "value"
        g["value"] = spec.aggregate(values) if spec is not None else None
        rows.append(g)
        for console, (extra, got) in more.items():
            rows.append({**g, "ok": len(got), "failed": 0, "metric": console,
                         "value": extra.aggregate(got)})
    return rows


def folder_summary(folder: Path) -> list[dict[str, Any]]:
    """`summary_table` of a run folder's last records (every rank's)."""
    from harness.run.store import latest_records

    return summary_table(list(latest_records(folder).values()))


def _task_measures(task: str) -> tuple:
    """The task's measured-length definitions, default first (() for a task this install does not know)."""
    try:
        return tuple(get_task(task).measures)
    except InputError:
        return ()
