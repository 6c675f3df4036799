"""Experiment identity: what makes a record's number, and the refusal to mix experiments in one run folder.

Every record carries its checkpoint's `model_fingerprint` (config before the override + weights), its
setting's `fingerprint` (the same after the override; part of the cell key) and RoPE fields (+ `rope_hash`;
the law inputs are not part of it: `rope-harness report --pretrain-base/--train-len/--tune-len` changes them),
its task's `task_identity` (the corpus spec and every option that changes a result, as canonical JSON;
`corpus` also on its own), its sample's token hash (`sample_hash`, where the task provides one) and the
`seed`. Under one label a folder holds one experiment: a run whose identity differs from the last records
already there under the same label is refused before anything is written (exit 2), naming what differs and the
fix. Records written before a key existed are compared on the keys they have. The rope_hash (which covers the
built model's frequency bytes) is compared once the setting's model is loaded, before its first record.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.preflight import PreparedSetting
from harness.suite import TaskSpec
from tasks.base import Task, TaskParams, get_task

FIX = "pass another --out, or another --label for this run"
# RoPE fields of the identity; the law inputs (pretrain_base, train_len, tune_len) are the report's to change
IDENTITY_FIELDS = ("rope_type", "rope_theta", "rope_params", "rotary_dim")
HINTS = {"max_length": " (the longest of --lengths: samples are cut at it)"}


def task_fields(task: Task, params: TaskParams) -> dict[str, Any]:
    """The task identity every record of (task, params) carries."""
    return {"corpus": params.corpus,
            "task_identity": json.dumps(task.identity(params), sort_keys=True, default=str)}


def done_cells(latest: Iterable[dict[str, Any]]) -> set[tuple]:
    """(setting, task, length, depth, sample, seed) of every cell whose last record is ok."""
    return {(r.get("setting"), r.get("task"), r.get("length"), r.get("depth"), r.get("sample"), r.get("seed"))
            for r in latest if r.get("status") == "ok"}


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def _differs(ours: Any, records: list[dict[str, Any]], key: str) -> Any:
    """A value of `key` in `records` other than ours (the first found), else None (equal or absent)."""
    for r in records:
        if key in r and r[key] is not None and r[key] != ours:
            return r[key]
    return None


def _model_difference(prep: PreparedSetting, old: list[dict[str, Any]], key: str) -> str | None:
    ours = getattr(prep, key)
    theirs = _differs(ours, old, key) if ours else None
    if theirs is None:
        return None
    model = next((r.get("model") for r in old if r.get(key) == theirs), "?")
    same = " (the same name: the checkpoint changed)" if model == prep.setting.model else ""
    return f"the model differs: {prep.setting.model} ({key} {ours}) vs the folder's {model} ({theirs}){same}"


def _setting_difference(prep: PreparedSetting, old: list[dict[str, Any]]) -> str | None:
    problem = _model_difference(prep, old, "model_fingerprint")
    if problem:
        return problem
    changed = [(k, prep.rope[k], v) for k in IDENTITY_FIELDS if k in prep.rope
               and (v := _differs(prep.rope[k], old, k)) is not None]
    if changed:
        what = ", ".join(f"{k} {_show(ours)} vs the folder's {_show(v)}" for k, ours, v in changed[:3])
        return f"the RoPE setting differs: {what}"
    return _model_difference(prep, old, "fingerprint")  # same RoPE fields: the checkpoint (older records)


def _task_difference(prep: PreparedSetting, spec: TaskSpec, old: list[dict[str, Any]]) -> str | None:
    fields = task_fields(get_task(spec.name), spec.params)
    theirs = _differs(fields["corpus"], old, "corpus")
    if theirs is not None:
        return f"the {spec.name} corpus differs: {fields['corpus']!r} vs the folder's {theirs!r}"
    theirs = _differs(fields["task_identity"], old, "task_identity")
    if theirs is not None:
        ours, before = json.loads(fields["task_identity"]), json.loads(theirs)
        keys = sorted(k for k in set(ours) | set(before) if ours.get(k) != before.get(k))
        what = ", ".join(f"{k} {_show(ours.get(k))} vs the folder's {_show(before.get(k))}{HINTS.get(k, '')}"
                         for k in keys[:3])
        return f"the {spec.name} task options differ: {what or theirs}"
    theirs = _differs(spec.params.seed, old, "seed")
    if theirs is not None:
        return f"the {spec.name} seed differs: {spec.params.seed} vs the folder's {theirs}"
    hashes = prep.sample_hashes.get(spec.name) or []
    for r in old:
        sample, recorded = r.get("sample"), r.get("sample_hash")
        if recorded and isinstance(sample, int) and sample < len(hashes) and hashes[sample] != recorded:
            return (f"the {spec.name} corpus text differs: sample {sample} of {fields['corpus']!r} has other "
                    f"tokens than the folder's (token hash {hashes[sample]} vs {recorded})")
    return None


def refuse_mixing(prepared: list[PreparedSetting], tasks: list[TaskSpec], latest: Iterable[dict[str, Any]],
                  out: Path) -> None:
    """InputError when a setting of this run would add records of another experiment under a label the
    folder already holds (see the module docstring)."""
    by_label: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in latest:
        by_label[r.get("setting")].append(r)
    for prep in prepared:
        old = by_label.get(prep.label)
        if not old:
            continue
        problem = _setting_difference(prep, old)
        for spec in tasks:
            if problem is None and spec.applies_to(prep.label):
                problem = _task_difference(prep, spec, [r for r in old if r.get("task") == spec.name])
        if problem:
            raise InputError(f"{out} already holds setting {prep.label!r} of another experiment ({problem}): "
                             f"{FIX}")


def folder_rope_hash(label: str, manifest: dict[str, Any], latest: Iterable[dict[str, Any]],
                     out: Path) -> str:
    """The rope_hash this setting's records and cell keys use in this folder: the manifest's, or its form with
    the law inputs (rope_hash_v1) where the folder was written with that, so such folders resume; refused
    when the folder's records of `label` carry neither (same fields, other frequency bytes, e.g. another
    transformers version, or other law inputs in a folder of the earlier form)."""
    mine = [r for r in latest if r.get("setting") == label]
    for candidate in (manifest["rope_hash"], manifest.get("rope_hash_v1")):
        if candidate and _differs(candidate, mine, "rope_hash") is None:
            return candidate
    theirs = _differs(manifest["rope_hash"], mine, "rope_hash")
    raise InputError(f"{out} already holds setting {label!r} of another experiment (the RoPE frequencies "
                     f"differ: rope_hash {manifest['rope_hash']} vs the folder's {theirs}; a folder written "
                     "before law inputs left the identity also counts them): " + FIX)
