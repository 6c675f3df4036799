"""Grid of cells -> records: skip finished cells, shard across ranks, survive OOM, show progress.

Flow per setting: load + verify the model once, then for each task: cells -> missing cells of this
rank -> groups -> engine -> one record per cell. Everything that can be validated (configs, overrides,
tokenizers, corpora, lengths) is validated before the run folder is touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import models, rope_config
from harness.distributed import rank_and_world, shard_cells
from harness.errors import InputError, one_line
from harness.memory_guard import address_space_limit, free_accelerator_memory, is_oom
from harness.run_info import write_run_json
from harness.store import Store
from harness.suite import RunOptions, Setting, TaskSpec
from tasks.base import Cell, Preflight, RunContext, TaskParams, get_task

log = logging.getLogger("rope_harness")


@dataclass
class RunResult:
    counts: Counter
    records: int
    failed: list[dict[str, Any]]
    table: list[dict[str, Any]]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def cell_key(fingerprint: str, rope_hash: str, task: str, identity: dict[str, Any], cell: Cell, seed: int) -> str:
    payload = json.dumps([fingerprint, rope_hash, task, identity, cell.length, cell.depth, cell.sample, seed],
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def validate_params(params: TaskParams) -> None:
    if not params.lengths or any(not isinstance(n, int) or n < 2 for n in params.lengths):
        raise InputError(f"--lengths must be integers >= 2 (got {params.lengths}): e.g. --lengths 1024,2048,4096")
    if params.samples < 1:
        raise InputError(f"--samples must be >= 1 (got {params.samples})")


def _bad_number(metrics: dict[str, Any]) -> str | None:
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            return key
    return None


@dataclass
class _Prepared:
    """One setting after preflight: its config, tokenizer, and every task's prepared state."""

    setting: Setting
    config: Any
    tokenizer: Any
    states: dict[str, Any]
    available: dict[str, int | None]


def _preflight(settings: list[Setting], tasks: list[TaskSpec], warn) -> list[_Prepared]:
    """Validate every setting and task before anything is written (bad input -> InputError)."""
    import copy

    from transformers import AutoTokenizer

    prepared = []
    for spec in tasks:
        validate_params(spec.params)
        get_task(spec.name)
    for setting in settings:
        config = models.load_config(setting.model, setting.revision, setting.trust_remote_code)
        rope_config.law_inputs(config, setting.override)
        rope_config.apply_override(copy.deepcopy(config), setting.override)
        path = models.resolve_model_path(setting.model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, revision=setting.revision,
                                                      trust_remote_code=setting.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load the tokenizer of {setting.model!r} ({one_line(exc)}): check the model folder") from None
        states, available = {}, {}
        for spec in tasks:
            if spec.params.bos and tokenizer.bos_token_id is None:
                spec.params.bos = False  # BOS by default only when the tokenizer has one (docs/design.md)
            ready = get_task(spec.name).prepare(Preflight(tokenizer, spec.params, warn))
            states[spec.name], available[spec.name] = ready.state, ready.available
        prepared.append(_Prepared(setting, config, tokenizer, states, available))
    return prepared


def _base_record(setting: Setting, loaded: models.Loaded, label: str, seed: int) -> dict[str, Any]:
    m = loaded.manifest
    return {"setting": label, "model": setting.model, "rope_type": m["rope_type"], "rope_theta": m["rope_theta"],
            "rope_params": json.dumps(m["rope_params"], sort_keys=True), "rotary_dim": m["rotary_dim"],
            "pretrain_base": m["pretrain_base"], "train_len": m["train_len"], "tune_len": m["tune_len"],
            "rope_hash": m["rope_hash"], "law_assumes_finetune": m["law_assumes_finetune"], "seed": seed,
            "dtype": loaded.dtype, "attn": loaded.attn, "fingerprint": loaded.fingerprint}


def run(settings: list[Setting], tasks: list[TaskSpec], options: RunOptions) -> RunResult:
    """Run every missing cell of this rank; see the module docstring."""
    from harness.engine import Engine, device_budget

    rank, world = rank_and_world()
    warned: set[str] = set()

    def warn(message: str) -> None:
        if message not in warned:
            warned.add(message)
            print(f"rope-harness: warning: {message}", file=sys.stderr)

    prepared = _preflight(settings, tasks, warn)
    store = Store(options.out, rank, world)
    if options.dry_run:
        return _dry_run(prepared, tasks, options, store)
    started = time.time()
    counts: Counter = Counter()
    failed: list[dict[str, Any]] = []
    manifests: dict[str, Any] = {}
    opened = False
    finished = store.finished_keys()  # read once: this run only adds keys of cells it did not find here
    try:
        for setting_index, prep in enumerate(prepared):
            setting = prep.setting
            loaded = models.load(setting.model, setting.override, dtype=setting.dtype, device=setting.device,
                                 attn=setting.attn, revision=setting.revision, trust_remote_code=setting.trust_remote_code)
            label = setting.label or models.default_label(setting.model, loaded.manifest)
            manifests[label] = {**loaded.manifest, "model": setting.model, "fingerprint": loaded.fingerprint}
            engine = Engine(loaded, chunk_size=options.chunk_size,
                            max_memory=options.max_memory or device_budget(loaded.device))
            for spec in tasks:
                if not spec.applies_to(label):
                    continue
                task = get_task(spec.name)
                ctx = RunContext(engine, prep.tokenizer, spec.params, prep.states[spec.name], loaded.manifest,
                                 _base_record(setting, loaded, label, spec.params.seed), store.append, warn)
                identity = task.identity(spec.params)
                limit = prep.available[spec.name]
                cells = [c for c in task.cells(spec.params) if limit is None or c.sample < limit]
                keyed = {c: cell_key(loaded.fingerprint, loaded.manifest["rope_hash"], spec.name, identity, c,
                                     spec.params.seed) for c in cells}
                owner = shard_cells(cells, world, setting_index)
                missing = [c for c in cells if keyed[c] not in finished and owner[c] == rank]
                if missing and not opened:
                    store.open()
                    opened = True
                    finished = store.finished_keys()  # again under the lock: a run that held it may have added cells
                    missing = [c for c in missing if keyed[c] not in finished]
                    write_run_json(options, store, started, None, manifests, prepared, counts)
                counts["skipped"] += len(cells) - len(missing)
                if not missing:
                    continue
                if any(c.length > rope_config.max_positions(loaded.config) for c in missing):
                    warn(f"{label}: lengths beyond max_position_embeddings={rope_config.max_positions(loaded.config)} "
                         "are evaluated as asked (extrapolation is the point)")
                with address_space_limit(options.max_memory, loaded.device):
                    for cell, record in _run_cells(task, ctx, engine, missing, options, label, spec.name):
                        record["cell_key"] = keyed[cell]
                        store.append("records", record)
                        counts[record["status"]] += 1
                        if record["status"] != "ok":
                            failed.append(record)
            del engine, loaded
    finally:
        if opened:
            write_run_json(options, store, started, time.time(), manifests, prepared, counts)
            store.close()
    table = summary_table(options.out)
    return RunResult(counts, sum(counts[s] for s in ("ok", "oom", "error")), failed, table)


def _size(n_bytes: float) -> str:
    """Readable at any budget: '0.00 GiB' would hide a MiB-sized estimate."""
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _run_cells(task, ctx: RunContext, engine, cells: list[Cell], options: RunOptions, label: str, task_name: str):
    """Yield (cell, record) for every cell; OOM retried once with a smaller chunk, then recorded."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: under the address-space cap a thread may fail to start
    bar = tqdm(total=len(cells), desc=f"{label} {task_name}", unit="cell", disable=not options.progress,
               file=sys.stderr, dynamic_ncols=True)
    tokens, start = 0, time.time()
    for group in task.groups(ctx, cells):
        longest = max(c.length for c in group)
        plan = engine.plan(longest)
        status, error, metrics = "ok", None, None
        if not plan.fits:
            status = "oom"
            error = (f"planner: {_size(plan.estimate_bytes)} needed at L={longest} exceeds "
                     f"--max-memory {_size(options.max_memory)}")
        else:
            for attempt in (0, 1):
                plan = engine.plan(longest)  # the retry's smaller chunk is the plan its records carry
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
                    if attempt == 0:  # retry once with a smaller prefill chunk
                        engine.chunk_size = max(64, (engine.plan(longest).chunk or longest) // 4)
            engine.chunk_size = options.chunk_size
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
    bar.close()


def _dry_run(prepared: list[_Prepared], tasks: list[TaskSpec], options: RunOptions, store: Store) -> RunResult:
    """List cells and the planner's memory estimate per cell before any model is loaded."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    from harness.engine import make_plan

    finished = store.finished_keys()
    print(f"{'setting':<36} {'task':<11} {'length':>7} {'depth':>6} {'sample':>6}  {'plan':<13} {'est. GiB':>8}")
    total = 0
    for prep in prepared:
        config = copy.deepcopy(prep.config)
        rope_config.apply_override(config, prep.setting.override)
        with torch.device("meta"):
            n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        device = models.pick_device(prep.setting.device)
        dtype = models.pick_dtype(prep.setting.dtype, device)
        label = prep.setting.label or prep.setting.model
        for spec in tasks:
            if not spec.applies_to(label):
                continue
            limit = prep.available[spec.name]
            for cell in get_task(spec.name).cells(spec.params):
                if limit is not None and cell.sample >= limit:
                    continue
                plan = make_plan(config, cell.length, dtype=dtype, attn=prep.setting.attn or "sdpa", n_params=n_params,
                                 max_memory=options.max_memory, chunk_size=options.chunk_size)
                depth = "-" if cell.depth is None else f"{cell.depth:g}"
                mark = "" if plan.fits else "  (oom: exceeds --max-memory)"
                print(f"{label[:36]:<36} {spec.name:<11} {cell.length:>7} {depth:>6} {cell.sample:>6}  "
                      f"{str(plan):<13} {plan.estimate_bytes / 2**30:>8.2f}{mark}")
                total += 1
    print(f"{total} cells ({len(finished)} already recorded in {options.out})")
    return RunResult(Counter(), 0, [], [])


def summary_table(folder: Path) -> list[dict[str, Any]]:
    """Per (setting, task, length): n ok, failed, and the task's default measure aggregated over samples
    (its transform of the mean over ok cells: ppl@L is exp of the mean NLL)."""
    import math

    from harness.store import read_jsonl

    if not folder.exists():
        return []
    groups: dict[tuple, dict[str, Any]] = {}
    for r in read_jsonl(folder, "records"):
        key = (r["setting"], r["task"], r["length"])
        g = groups.setdefault(key, {"setting": key[0], "task": key[1], "length": key[2], "ok": 0, "failed": 0,
                                    "values": [], "names": []})
        if r["status"] != "ok":
            g["failed"] += 1
            continue
        g["ok"] += 1
        spec = _default_measure(r["task"])
        if spec is not None and r.get(spec.metric) is not None:
            g["values"].append(float(r[spec.metric]))
            g["names"].append(spec.console or r.get("metric") or spec.metric)
    rows = []
    for g in sorted(groups.values(), key=lambda g: (g["setting"], g["task"], g["length"])):
        values, names = g.pop("values"), g.pop("names")
        spec = _default_measure(g["task"])
        mean = sum(values) / len(values) if values else None
        g["metric"] = names[-1] if names else (spec.console if spec is not None else "") or "value"
        g["value"] = None if mean is None else (math.exp(mean) if spec.transform == "exp" else mean)
        rows.append(g)
    return rows


def _default_measure(task: str):
    """The task's default measured-length definition (None for a task this install does not know)."""
    try:
        measures = get_task(task).measures
    except InputError:
        return None
    return measures[0] if measures else None
