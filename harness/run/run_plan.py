"""The run plan: every setting and task checked, and the run folder read once, before anything is written.

Per setting: its checkpoint described without weights (`models.describe`: config, override, law inputs,
fingerprints) and its tokenizer, handed on to the model loader; per task the setting runs: the task's
prepared state, its cells (as many samples as the data has) and their sample hashes. The folder's last
record per cell is read once, and a setting that would add another experiment under a label the folder
holds is refused (exit 2). The dry run, the runner and its console summary all read this plan; cells are
identified everywhere by one function, `cell_key`.

A dry run tolerates what only the hub can give (a hub config or tokenizer, an `hf:` corpus or source not in
the local cache): those settings and tasks are listed, marked, instead of refused.

Experiment identity: every record carries its checkpoint's `model_fingerprint` (config before the override
+ weights), its setting's `fingerprint` (the same after the override; part of the cell key) and RoPE fields
(+ `rope_hash`; the law inputs are not part of it: `rope-harness report --pretrain-base/--train-len/
--tune-len` changes them), its task's `task_identity` (the corpus spec and every option that changes a
result, as canonical JSON; `corpus` also on its own), its sample's token hash (`sample_hash`) and the `seed`.
Under one label a folder holds one experiment: a run whose identity differs from the last records already
there under the same label is refused, naming what differs and the fix. Records written before a key
existed are compared on the keys they have. The rope_hash (which covers the built model's frequency bytes)
is compared once the setting's model is loaded, before its first record (`folder_rope_hash`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from harness import factory
from harness.core import heartbeat
from harness.core.errors import InputError, one_line
from harness.core.metrics import EVIDENCE_SAMPLES
from harness.data.corpus import bos_ids
from harness.engine.memory_guard import available_at_start
from harness.model import fingerprint, models, rope_config
from harness.model.checkpoints import PACKAGED
from harness.run.store import Store
from harness.run.suite import RunOptions, Setting, TaskSpec
from tasks.base import Cell, Preflight, Task, TaskParams, get_task

FIX = "pass another --out, or another --label for this run"
# RoPE fields of the identity; the law inputs (pretrain_base, train_len, tune_len) are the report's to change
IDENTITY_FIELDS = ("rope_type", "rope_theta", "rope_params", "rotary_dim")
HINTS = {"max_length": " (the longest of --lengths: samples are cut at it)"}
LAW_KEYS = ("pretrain_base", "train_len", "tune_len")


@dataclass(frozen=True)
class TaskPlan:
    """One task of one setting, frozen once built: its parameters for this setting's tokenizer (the suite's
    TaskSpec is shared by every setting and never changed), its prepared state and the cells the data
    allows."""

    spec: TaskSpec
    task: Task
    params: TaskParams  # spec.params with this tokenizer's BOS decision (corpus.bos_ids)
    cells: tuple[Cell, ...]
    state: Any = None
    available: int | None = None  # samples the data has, when fewer than asked
    sample_hashes: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def identity(self) -> dict[str, Any]:
        """The options that change a result (part of every cell key): computed once per task, not per cell."""
        return self.task.identity(self.params)

    @property
    def fields(self) -> dict[str, Any]:
        """The task identity every record of this task carries."""
        return {"corpus": self.params.corpus,
                "task_identity": json.dumps(self.identity, sort_keys=True, default=str)}

    def sample_hash(self, cell: Cell) -> str | None:
        hashes = self.sample_hashes or ()
        return hashes[cell.sample] if cell.sample < len(hashes) else None


@dataclass(frozen=True)
class SettingPlan:
    """One setting, frozen once built: its checkpoint (None: config unreadable, dry run only) with its
    tokenizer, and its tasks."""

    setting: Setting
    label: str
    checkpoint: models.Checkpoint | None
    index: int  # its place in the run (ranks shard each setting's cells from here)
    tasks: dict[str, TaskPlan] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # dry run: what could not be read, and so is not checked
    rope: dict[str, Any] = field(default_factory=dict)  # the manifest's RoPE fields as records carry them

    @property
    def config(self):
        return self.checkpoint.config if self.checkpoint else None

    @property
    def tokenizer(self):
        return self.checkpoint.tokenizer if self.checkpoint else None

    @property
    def longest(self) -> int:
        """The longest length of any of the setting's tasks (0 without tasks): a served engine's context."""
        return max((max(t.params.lengths) for t in self.tasks.values()), default=0)

    @property
    def fingerprint(self) -> str | None:
        return self.checkpoint.fingerprint if self.checkpoint else None

    @property
    def model_fingerprint(self) -> str | None:
        return self.checkpoint.model_fingerprint if self.checkpoint else None


def cell_key(fingerprint: str, rope_hash: str, task: str, task_identity: dict[str, Any], cell: Cell,
             seed: int) -> str:
    """The one identity of a cell: resume, the dry run and the exit code all compare these."""
    payload = json.dumps([fingerprint, rope_hash, task, task_identity, cell.length, cell.depth, cell.sample,
                          seed], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class RunPlan:
    """What the run will do and what its folder held when the plan was built (read once; the runner keeps
    its own copy up to date as it writes)."""

    settings: tuple[SettingPlan, ...]
    specs: tuple[TaskSpec, ...]
    out: Path
    latest: Mapping[str, dict[str, Any]]  # the folder's latest record per cell (store.latest_records)
    signature: tuple = ()  # the records shards as read (Store.signature)

    def key(self, prep: SettingPlan, plan: TaskPlan, cell: Cell, rope_hash: str) -> str:
        return cell_key(prep.fingerprint or "", rope_hash, plan.name, plan.identity, cell, plan.params.seed)

    def folder_hash(self, label: str) -> str | None:
        """The rope_hash this label's records carry in the folder (None: none yet): what a dry run keys by."""
        return next((r["rope_hash"] for r in reversed(list(self.latest.values()))
                     if r.get("setting") == label and r.get("rope_hash")), None)

    def done(self, key: str) -> bool:
        return self.latest.get(key, {}).get("status") == "ok"

    def todo(self, prep: SettingPlan, plan: TaskPlan, rope_hash: str | None = None) -> list[Cell]:
        """Cells without an ok last record here (rope_hash: the loaded model's; else the folder's)."""
        rope_hash = rope_hash or self.folder_hash(prep.label)
        if rope_hash is None:
            return list(plan.cells)
        return [c for c in plan.cells if not self.done(self.key(prep, plan, c, rope_hash))]

    def law_flags(self) -> dict[str, list[tuple[str, float]]]:
        """{law input: [(label, value)]} for the inputs a setting gave as flags or suite keys."""
        out: dict[str, list[tuple[str, float]]] = {}
        for prep in self.settings:
            for key in LAW_KEYS:
                value = getattr(prep.setting.override, key)
                if value is not None:
                    out.setdefault(key, []).append((prep.label, value))
        return out


# ------------------------------------------------------------------------------------------- build


def build(settings: list[Setting], tasks: list[TaskSpec], options: RunOptions, warn) -> RunPlan:
    """Check every setting and task, read the folder, refuse mixing; nothing is written."""
    available_at_start()  # measured before any model loads: the CPU's default memory budget is a share of it
    for spec in tasks:
        validate_params(spec.params)
        get_task(spec.name)
    prepared = []
    for index, setting in enumerate(settings):
        with heartbeat.phase(f"planning setting {index + 1} of {len(settings)} ({setting.model}: config, "
                             "tokenizer, prompts)"):
            prepared.append(_setting_plan(setting, index, tasks, warn, options.dry_run))
    labels = [p.label for p in prepared]
    for label in labels:
        if labels.count(label) > 1:  # one label is one curve: two settings would mix in it
            raise InputError(f"several settings get the label {label!r}: give each setting its own label")
    store = Store(options.out)
    signature = store.signature()
    plan = RunPlan(tuple(prepared), tuple(tasks), options.out, MappingProxyType(store.latest()), signature)
    refuse_mixing(plan)
    _warn_past_max_positions(plan, warn)
    _warn_assumed_law_inputs(prepared, warn)
    _warn_under_evidence_bar(tasks, warn)
    return plan


def validate_params(params: TaskParams) -> None:
    if not params.lengths or any(not isinstance(n, int) or n < 2 for n in params.lengths):
        raise InputError(f"--lengths must be integers >= 2 (got {params.lengths}): "
                         "e.g. --lengths 1024,2048,4096")
    if params.samples < 1:
        raise InputError(f"--samples must be >= 1 (got {params.samples})")


def is_hub_id(model: str) -> bool:
    """owner/name (or name) that is neither a zoo name nor a local path: only the hub (or its cache) has
    it."""
    if (model.startswith("zoo:") or model in PACKAGED or model.startswith((".", "/", "~"))
            or model.count("/") > 1):
        return False
    return not Path(model).expanduser().exists()


def warner() -> Callable[[str], None]:
    """A warn function for one run: each message once, on stderr."""
    said: set[str] = set()

    def warn(message: str) -> None:
        if message not in said:
            said.add(message)
            print(f"rope-harness: warning: {message}", file=sys.stderr)

    return warn


def describe_model(name: str) -> tuple[Any, str]:
    """Another model by name (a task's evaluator): its tokenizer and fingerprint, no weights."""
    config = models.load_config(name)
    tokenizer = models.load_tokenizer(name)
    return tokenizer, fingerprint.model_fingerprint(models.resolve_model_path(name), config, None)


def _setting_plan(setting: Setting, index: int, tasks: list[TaskSpec], warn, tolerant: bool) -> SettingPlan:
    factory.check_options(setting)
    notes: list[str] = []
    try:
        checkpoint = models.describe(setting.model, setting.override, setting.revision,
                                     setting.trust_remote_code)
    except InputError as exc:
        if not (tolerant and is_hub_id(setting.model)):
            raise
        notes.append(f"config of {setting.model!r} not available offline ({exc}): no memory estimate, "
                     "samples not checked")
        checkpoint = None
    rope: dict[str, Any] = {}
    label = setting.label or setting.model
    if checkpoint is not None:
        checkpoint = replace(checkpoint, tokenizer=_tokenizer(setting, tolerant, notes))
        factory.check_setting(setting, checkpoint, tolerant, notes)
        rope, default = checkpoint.rope_and_label()
        label = setting.label or default
    tokenizer = checkpoint.tokenizer if checkpoint else None
    plans = {spec.name: _task_plan(setting, tokenizer, spec, warn, tolerant, notes)
             for spec in tasks if spec.applies_to(label)}
    return SettingPlan(setting, label, checkpoint, index, plans, tuple(notes), rope)


def _tokenizer(setting: Setting, tolerant: bool, notes: list[str]):
    try:
        return models.load_tokenizer(setting.model, setting.revision, setting.trust_remote_code)
    except (OSError, ValueError) as exc:
        if tolerant and is_hub_id(setting.model):
            notes.append(f"tokenizer of {setting.model!r} not available offline ({one_line(exc, 120)}): "
                         "samples not checked")
            return None
        raise InputError(f"cannot load the tokenizer of {setting.model!r} ({one_line(exc)}): check the model "
                         "folder") from None


def _remote_data(spec: TaskSpec) -> bool:
    """The task reads an `hf:` corpus or source (streamed from the hub)."""
    values = [spec.params.corpus, *spec.params.options.values()]
    return any(isinstance(v, str) and v.startswith("hf:") for v in values)


def _task_plan(setting: Setting, tokenizer: Any, spec: TaskSpec, warn, tolerant: bool,
               notes: list[str]) -> TaskPlan:
    task = get_task(spec.name)
    factory.check_task(setting, task)
    if tokenizer is None:
        return TaskPlan(spec, task, spec.params, tuple(task.cells(spec.params)))
    params = replace(spec.params, bos=bool(bos_ids(tokenizer, spec.params.bos)))
    cells = tuple(task.cells(params))
    try:
        ready = task.prepare(Preflight(tokenizer, params, warn, describe_model))
    except InputError as exc:
        if not (tolerant and _remote_data(spec)):
            raise
        notes.append(f"{spec.name}: data not available offline ({exc}): samples not checked")
        return TaskPlan(spec, task, params, cells)
    hashes = task.samples_hash(ready.state)
    if ready.available is not None:
        cells = tuple(c for c in cells if c.sample < ready.available)
    return TaskPlan(spec, task, params, cells, ready.state, ready.available,
                    tuple(hashes) if hashes is not None else None)


# ---------------------------------------------------------------------------------------- identity


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _differs(ours: Any, records: list[dict[str, Any]], key: str) -> Any:
    """A value of `key` in `records` other than ours (the first found), else None (equal or absent)."""
    for r in records:
        if key in r and r[key] is not None and r[key] != ours:
            return r[key]
    return None


def _model_difference(prep: SettingPlan, old: list[dict[str, Any]], key: str) -> str | None:
    ours = getattr(prep, key)
    theirs = _differs(ours, old, key) if ours else None
    if theirs is None:
        return None
    model = next((r.get("model") for r in old if r.get(key) == theirs), "?")
    same = " (the same name: the checkpoint changed)" if model == prep.setting.model else ""
    return f"the model differs: {prep.setting.model} ({key} {ours}) vs the folder's {model} ({theirs}){same}"


def _setting_difference(prep: SettingPlan, old: list[dict[str, Any]]) -> str | None:
    ours = factory.engine_name(prep.setting)
    theirs = next((r.get("engine") for r in old if r.get("engine") != ours), ours)
    if theirs != ours:  # a served run and an in-process run are different experiments
        return f"the engine differs: {ours or 'in-process'} vs the folder's {theirs or 'in-process'}"
    problem = _model_difference(prep, old, "model_fingerprint")
    if problem:
        return problem
    changed = [(k, prep.rope[k], v) for k in IDENTITY_FIELDS if k in prep.rope
               and (v := _differs(prep.rope[k], old, k)) is not None]
    if changed:
        what = ", ".join(f"{k} {_show(ours)} vs the folder's {_show(v)}" for k, ours, v in changed[:3])
        return f"the RoPE setting differs: {what}"
    return _model_difference(prep, old, "fingerprint")  # same RoPE fields: the checkpoint (older records)


def _task_difference(prep: SettingPlan, plan: TaskPlan, old: list[dict[str, Any]]) -> str | None:
    name, fields = plan.name, plan.fields
    theirs = _differs(fields["corpus"], old, "corpus")
    if theirs is not None:
        return f"the {name} corpus differs: {fields['corpus']!r} vs the folder's {theirs!r}"
    theirs = _differs(fields["task_identity"], old, "task_identity")
    if theirs is not None:
        ours, before = json.loads(fields["task_identity"]), json.loads(theirs)
        keys = sorted(k for k in set(ours) | set(before) if ours.get(k) != before.get(k))
        what = ", ".join(f"{k} {_show(ours.get(k))} vs the folder's {_show(before.get(k))}{HINTS.get(k, '')}"
                         for k in keys[:3])
        return f"the {name} task options differ: {what or theirs}"
    theirs = _differs(plan.params.seed, old, "seed")
    if theirs is not None:
        return f"the {name} seed differs: {plan.params.seed} vs the folder's {theirs}"
    hashes = plan.sample_hashes or ()
    for r in old:
        sample, recorded = r.get("sample"), r.get("sample_hash")
        if recorded and isinstance(sample, int) and sample < len(hashes) and hashes[sample] != recorded:
            return (f"the {name} corpus text differs: sample {sample} of {fields['corpus']!r} has other "
                    f"tokens than the folder's (token hash {hashes[sample]} vs {recorded})")
    return None


def refuse_mixing(plan: RunPlan) -> None:
    """InputError when a setting of this run would add records of another experiment under a label the
    folder already holds (see the module docstring)."""
    by_label: dict[Any, list[dict[str, Any]]] = {}
    for r in plan.latest.values():
        by_label.setdefault(r.get("setting"), []).append(r)
    for prep in plan.settings:
        old = by_label.get(prep.label)
        if not old:
            continue
        problem = _setting_difference(prep, old)
        for task_plan in prep.tasks.values():
            if problem is None:
                mine = [r for r in old if r.get("task") == task_plan.name]
                problem = _task_difference(prep, task_plan, mine)
        if problem:
            raise InputError(f"{plan.out} already holds setting {prep.label!r} of another experiment "
                             f"({problem}): {FIX}")


def folder_rope_hash(latest: Mapping[str, dict[str, Any]], out: Path, label: str,
                     manifest: dict[str, Any]) -> str:
    """The rope_hash this setting's records and cell keys use in this folder: the manifest's, or its form with
    the law inputs (rope_hash_v1) where the folder was written with that, so such folders resume; refused
    when the folder's records of `label` carry neither (same fields, other frequency bytes, e.g. another
    transformers version, or other law inputs in a folder of the earlier form)."""
    mine = [r for r in latest.values() if r.get("setting") == label]
    for candidate in (manifest["rope_hash"], manifest.get("rope_hash_v1")):
        if candidate and _differs(candidate, mine, "rope_hash") is None:
            return candidate
    theirs = _differs(manifest["rope_hash"], mine, "rope_hash")
    raise InputError(f"{out} already holds setting {label!r} of another experiment (the RoPE "
                     f"frequencies differ: rope_hash {manifest['rope_hash']} vs the folder's {theirs}; a "
                     "folder written before law inputs left the identity also counts them): " + FIX)


# ---------------------------------------------------------------------------------------- warnings


def _warn_assumed_law_inputs(prepared: list[SettingPlan], warn) -> None:
    """A law input no flag, config entry or known checkpoint gave is a guess from the config: said, once per
    setting, with the fix (no rerun needed: the report takes them too)."""
    for prep in prepared:
        guessed = [f"{key} {prep.rope[key]:g} from {prep.rope[f'{key}_source']}" for key in LAW_KEYS
                   if prep.rope.get(f"{key}_source") not in (None, "flag", "rope_harness_law")
                   and not str(prep.rope.get(f"{key}_source")).startswith("known:")]
        if guessed:
            warn(f"law inputs of {prep.label} assumed from the config ({', '.join(guessed)}): if the "
                 "checkpoint was pre-trained at another base or length, pass --pretrain-base/--train-len/"
                 "--tune-len to `run` or to `rope-harness report` (no rerun)")


def _warn_past_max_positions(plan: RunPlan, warn) -> None:
    """One warning for the run, naming every setting that has cells to run past max_position_embeddings."""
    past: dict[int, list[str]] = {}
    for prep in plan.settings:
        if prep.config is None:
            continue
        limit = rope_config.max_positions(prep.config)
        if any(c.length > limit for task_plan in prep.tasks.values() for c in plan.todo(prep, task_plan)):
            past.setdefault(limit, []).append(prep.label)
    if past:
        named = "; ".join(f"{', '.join(labels)} (max_position_embeddings {limit})"
                          for limit, labels in past.items())
        count = sum(len(labels) for labels in past.values())
        warn(f"{count} setting(s) run past max_position_embeddings, evaluated as asked (extrapolation is the "
             f"point): {named}")


def _warn_under_evidence_bar(tasks, warn) -> None:
    """A task asking fewer samples per length than the report's evidence bar measures no length: said before
    hours are spent (a sample's depths count once)."""
    few = [f"{spec.name} ({spec.params.samples})" for spec in tasks if spec.params.samples < EVIDENCE_SAMPLES]
    if few:
        warn(f"{', '.join(few)}: fewer samples per length than the report's evidence bar "
             f"({EVIDENCE_SAMPLES}; depths of one sample count once): their lengths will be listed, not "
             "measured; raise --samples")
