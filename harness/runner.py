"""Grid of cells -> records: skip finished cells, retry failed ones, shard across ranks, survive OOM.

Flow: preflight (harness.preflight: configs, overrides, tokenizers, corpora, lengths) and the identity check
(harness.identity: no second experiment under a label of the folder) before the run folder is touched;
then per setting: load + verify the model once, and for each task: cells -> cells of this rank without an
ok last record -> groups -> engine -> one record per cell. The exit code is 0 only when every cell of the
grid (this rank's share) ends with an ok record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import identity, models, rope_config
from harness.distributed import rank_and_world, shard_cells
from harness.dry_run import show as show_dry_run
from harness.errors import InputError, one_line
from harness.memory_guard import address_space_limit, free_accelerator_memory, is_oom
from harness.preflight import PreparedSetting, preflight
from harness.run_info import write_run_json
from harness.store import Store
from harness.suite import RunOptions, Setting, TaskSpec
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

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def cell_key(fingerprint: str, rope_hash: str, task: str, identity: dict[str, Any], cell: Cell,
             seed: int) -> str:
    payload = json.dumps([fingerprint, rope_hash, task, identity, cell.length, cell.depth, cell.sample, seed],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _bad_number(metrics: dict[str, Any]) -> str | None:
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            return key
    return None


LAW_SOURCES = ("pretrain_base_source", "train_len_source", "tune_len_source")
WEIGHT_FIELDS = ("weights", "gguf_file", "gguf_sha256")  # GGUF checkpoints only (harness.gguf)


def _base_record(setting: Setting, loaded: models.Loaded, label: str, seed: int,
                 rope_hash: str) -> dict[str, Any]:
    m = loaded.manifest
    return {"setting": label, "model": setting.model, "rope_type": m["rope_type"],
            "rope_theta": m["rope_theta"], "rope_params": json.dumps(m["rope_params"], sort_keys=True),
            "rotary_dim": m["rotary_dim"],
            "pretrain_base": m["pretrain_base"], "train_len": m["train_len"], "tune_len": m["tune_len"],
            "rope_hash": rope_hash, "law_assumes_finetune": m["law_assumes_finetune"], "seed": seed,
            "dtype": loaded.dtype, "attn": loaded.attn, "fingerprint": loaded.fingerprint,
            **{k: m[k] for k in LAW_SOURCES + WEIGHT_FIELDS if k in m}}


def _warn_assumed_law_inputs(prepared: list[PreparedSetting], warn) -> None:
    """A law input no flag, config entry or known checkpoint gave is a guess from the config: said, once per
    setting, with the fix (no rerun needed: the report takes them too)."""
    for prep in prepared:
        guessed = [f"{key} {prep.rope[key]:g} from {prep.rope[f'{key}_source']}"
                   for key in ("pretrain_base", "train_len", "tune_len")
                   if prep.rope.get(f"{key}_source") not in (None, "flag", "rope_harness_law")
                   and not str(prep.rope.get(f"{key}_source")).startswith("known:")]
        if guessed:
            warn(f"law inputs of {prep.label} assumed from the config ({', '.join(guessed)}): if the "
                 "checkpoint was pre-trained at another base or length, pass --pretrain-base/--train-len/"
                 "--tune-len to `run` or to `rope-harness report` (no rerun)")


def _warn_past_max_positions(prepared: list[PreparedSetting], tasks: list[TaskSpec], latest, warn) -> None:
    """One warning for the run, naming every setting that has cells to run past max_position_embeddings."""
    done = identity.done_cells(latest)
    past: dict[int, list[str]] = {}
    for prep in prepared:
        if prep.config is None:
            continue
        limit = rope_config.max_positions(prep.config)
        if any(c.length > limit
               and (prep.label, spec.name, c.length, c.depth, c.sample, spec.params.seed) not in done
               for spec in tasks if spec.applies_to(prep.label) and max(spec.params.lengths) > limit
               for c in get_task(spec.name).cells(spec.params)):
            past.setdefault(limit, []).append(prep.label)
    if past:
        named = "; ".join(f"{', '.join(labels)} (max_position_embeddings {limit})"
                          for limit, labels in past.items())
        count = sum(len(labels) for labels in past.values())
        warn(f"{count} setting(s) run past max_position_embeddings, evaluated as asked (extrapolation is the "
             f"point): {named}")


def run(settings: list[Setting], tasks: list[TaskSpec], options: RunOptions) -> RunResult:
    """Run every cell of this rank without an ok record; see the module docstring."""
    from harness.engine import Engine, device_budget

    rank, world = rank_and_world()
    warned: set[str] = set()

    def warn(message: str) -> None:
        if message not in warned:
            warned.add(message)
            print(f"rope-harness: warning: {message}", file=sys.stderr)

    prepared = preflight(settings, tasks, warn, tolerant=options.dry_run)
    store = Store(options.out, rank, world)
    latest = store.latest()  # read once: this run only adds records of cells without an ok one here
    identity.refuse_mixing(prepared, tasks, latest.values(), options.out)
    _warn_past_max_positions(prepared, tasks, latest.values(), warn)
    _warn_assumed_law_inputs(prepared, warn)
    if options.dry_run:
        show_dry_run(prepared, tasks, options, list(latest.values()))
        return RunResult(Counter(), 0, 0, [])
    started = time.time()
    counts: Counter = Counter()
    manifests: dict[str, Any] = {}
    opened = False
    finished = {key for key, r in latest.items() if r.get("status") == "ok"}
    grid: set[str] = set()  # this rank's cells: the exit code asks each for an ok last record
    try:
        for setting_index, prep in enumerate(prepared):
            setting, label = prep.setting, prep.label
            loaded = models.load(setting.model, setting.override, dtype=setting.dtype, device=setting.device,
                                 attn=setting.attn, revision=setting.revision,
                                 trust_remote_code=setting.trust_remote_code)
            rope_hash = identity.folder_rope_hash(label, loaded.manifest, latest.values(), options.out)
            manifests[label] = {**loaded.manifest, "model": setting.model, "fingerprint": loaded.fingerprint}
            engine = Engine(loaded, chunk_size=options.chunk_size,
                            max_memory=options.max_memory or device_budget(loaded.device),
                            strategy=options.strategy, batch_size=options.batch_size)
            for spec in tasks:
                if not spec.applies_to(label):
                    continue
                task = get_task(spec.name)
                base = {**_base_record(setting, loaded, label, spec.params.seed, rope_hash),
                        "model_fingerprint": prep.model_fingerprint,
                        **identity.task_fields(task, spec.params)}
                ctx = RunContext(engine, prep.tokenizer, spec.params, prep.states[spec.name], loaded.manifest,
                                 base, store.append, warn, run_dir=options.out)
                key_identity = task.identity(spec.params)
                limit = prep.available[spec.name]
                cells = [c for c in task.cells(spec.params) if limit is None or c.sample < limit]
                keyed = {c: cell_key(loaded.fingerprint, rope_hash, spec.name,
                                     key_identity, c, spec.params.seed) for c in cells}
                owner = shard_cells(cells, world, setting_index)
                mine = [c for c in cells if owner[c] == rank]
                grid.update(keyed[c] for c in mine)
                missing = [c for c in mine if keyed[c] not in finished]
                if missing and not opened:
                    store.open()
                    opened = True
                    # again under the lock: a run that held it may have added cells
                    finished = store.finished_keys()
                    missing = [c for c in missing if keyed[c] not in finished]
                    write_run_json(options, store, started, None, manifests, prepared, counts)
                counts["skipped"] += len(mine) - len(missing)
                counts["retried"] += sum(keyed[c] in latest for c in missing)  # their last record failed
                if not missing:
                    continue
                hashes = prep.sample_hashes.get(spec.name) or []
                with address_space_limit(options.max_memory, loaded.device):
                    for cell, record in _run_cells(task, ctx, engine, missing, options, label, spec.name):
                        record.update(cell_key=keyed[cell], recorded_at=round(time.time(), 3),
                                      sample_hash=hashes[cell.sample] if cell.sample < len(hashes) else None)
                        store.append("records", record)
                        counts[record["status"]] += 1
            del engine, loaded
    finally:
        if opened:
            write_run_json(options, store, started, time.time(), manifests, prepared, counts)
            store.close()
    after = store.latest()
    failed = sum(after.get(key, {}).get("status") != "ok" for key in grid)
    return RunResult(counts, sum(counts[s] for s in ("ok", "oom", "error")), failed,
                     summary_table(options.out), law_flags(prepared),
                     refusal_advice([after[key] for key in grid if key in after]))


def refusal_advice(records: list[dict[str, Any]]) -> str:
    """What to do about cells the planner refused (a rerun refuses them again): '' when there are none."""
    refused = [r for r in records if r.get("status") == "oom" and str(r.get("error")).startswith("planner:")]
    if not refused:
        return ""
    shortest = min(r["length"] for r in refused)
    worst = max(refused, key=lambda r: r["length"])
    return (f"{len(refused)} cell(s) at L >= {shortest} exceed the memory budget by the planner's estimate "
            f"({worst['error'].removeprefix('planner: ')}); a rerun refuses them again: raise --max-memory "
            "to the estimate, pass --strategy stream (one decoder layer at a time), or drop those lengths")


def law_flags(prepared: list[PreparedSetting]) -> dict[str, list[tuple[str, float]]]:
    """{law input: [(label, value)]} for the inputs a setting gave as flags or suite keys."""
    out: dict[str, list[tuple[str, float]]] = {}
    for prep in prepared:
        for key in ("pretrain_base", "train_len", "tune_len"):
            value = getattr(prep.setting.override, key)
            if value is not None:
                out.setdefault(key, []).append((prep.label, value))
    return out


def _size(n_bytes: float) -> str:
    """Readable at any budget: '0.00 GiB' would hide a MiB-sized estimate."""
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _fitting_first(groups: list[list[Cell]], engine, generation: bool) -> Iterator[list[Cell]]:
    """Each group, split where its longest length does not fit the budget: the lengths that fit are scored
    (a shorter shared pass), the rest recorded as refused by the planner."""
    for group in groups:
        fit = [c for c in group if engine.plan(c.length, generation=generation).fits]
        yield from (part for part in (fit, [c for c in group if c not in fit]) if part)


def _run_cells(task, ctx: RunContext, engine, cells: list[Cell], options: RunOptions, label: str,
               task_name: str):
    """Yield (cell, record) for every cell; OOM retried once with a smaller chunk, then recorded."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: under the address-space cap a thread may fail to start
    # a redrawn bar only on a terminal: in a log file its redraws pile onto one line
    terminal = sys.stderr.isatty()
    bar = tqdm(total=len(cells), desc=f"{label} {task_name}", unit="cell",
               disable=not options.progress or not terminal, file=sys.stderr, dynamic_ncols=True)
    tokens, done, start = 0, 0, time.time()
    for group in _fitting_first(task.groups(ctx, cells), engine, task.generates):
        longest = max(c.length for c in group)
        plan = engine.plan(longest, generation=task.generates)
        status, error, metrics = "ok", None, None
        if not plan.fits:
            status = "oom"
            error = (f"planner: {_size(plan.estimate_bytes)} needed at L={longest} exceeds "
                     f"--max-memory {_size(options.max_memory)}")
        else:
            for attempt in (0, 1):
                # the retry's smaller chunk is the plan its records carry
                plan = engine.plan(longest, generation=task.generates)
                try:
                    metrics = task.score_group(ctx, group)
                    status, error = "ok", None
                    break
                except Exception as exc:  # recorded per cell; the run goes on
                    if not is_oom(exc):
                        status, error = "error", one_line(exc)
                        log.debug("cell failed", exc_info=True)
                        break
                    status, error = "oom", one_line(exc)
                    free_accelerator_memory()
                    if attempt == 0 and engine.batch_size(longest, task.generates) > 1:
                        engine.batch = 1  # retry a batch row by row first
                    elif attempt == 0:  # retry once with a smaller chunk of the same strategy
                        engine.strategy = plan.strategy if plan.strategy != "single" else "prefill"
                        engine.chunk_size = max(64, (plan.chunk or longest) // 4)
            engine.chunk_size, engine.strategy = options.chunk_size, options.strategy
            engine.batch = options.batch_size
        for i, cell in enumerate(group):
            record = {**ctx.base_record, "task": task_name, "length": cell.length, "depth": cell.depth,
                      "sample": cell.sample, "status": status, "error": error, "plan": str(plan)}
            if metrics is not None:
                record.update(metrics[i])
                bad = _bad_number(metrics[i])
                if bad:
                    record.update(status="error", error=f"non-finite {bad} ({metrics[i][bad]})")
            yield cell, record
        tokens += longest
        bar.update(len(group))
        bar.set_postfix(tok_s=f"{tokens / max(time.time() - start, 1e-9):.0f}")
        done += len(group)
        if options.progress and not terminal:  # one plain line per scored group instead
            print(f"{label} {task_name}: {done}/{len(cells)} cells, {time.time() - start:.0f} s",
                  file=sys.stderr, flush=True)
    bar.close()


def summary_table(folder: Path) -> list[dict[str, Any]]:
    """Per (setting, task, length): n ok, failed, and the task's default measure aggregated over samples
    (its transform of the mean over ok cells: ppl@L is exp of the mean NLL). Under it, one row per further
    per-length measure with a console name whose metric some ok record carries (ppl_key with --key-tokens):
    ok = cells with a value, failed = 0 (the default row counts the failures once)."""
    from harness.store import latest_records

    if not folder.exists():
        return []
    measures: dict[str, tuple] = {}  # task -> its measures, looked up once per task, not per record
    groups: dict[tuple, dict[str, Any]] = {}
    for r in latest_records(folder).values():  # the last record of each cell, as everywhere
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
        g["value"] = _aggregate(spec, values)
        rows.append(g)
        for console, (extra, got) in more.items():
            rows.append({**g, "ok": len(got), "failed": 0, "metric": console,
                         "value": _aggregate(extra, got)})
    return rows


def _task_measures(task: str) -> tuple:
    """The task's measured-length definitions, default first (() for a task this install does not know)."""
    try:
        return tuple(get_task(task).measures)
    except InputError:
        return ()


def _aggregate(spec, values: list[float]) -> float | None:
    """The measure's transform of the mean over samples (exp for a mean NLL); None without values."""
    if not values:
        return None
    mean = sum(values) / len(values)
    return math.exp(mean) if spec.transform == "exp" else mean
