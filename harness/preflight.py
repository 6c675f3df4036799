"""Preflight: every setting and task validated before the run folder is touched (bad input -> InputError).

Per setting: its config (no weights), the RoPE override checked and applied to a copy, the label and the
identity its records will carry (model fingerprint, the manifest's RoPE fields), its tokenizer; per task
the setting runs: the task's prepared state, how many samples there are and their token hashes.

A dry run tolerates what only the hub can give (a hub config or tokenizer, an `hf:` corpus or source not in
the local cache): those settings and tasks are listed, marked, instead of refused.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import models, rope_config
from harness.checkpoints import PACKAGED
from harness.errors import InputError, one_line
from harness.suite import Setting, TaskSpec
from tasks.base import Preflight, TaskParams, get_task

# Manifest fields known before any weight is loaded; records carry them, the identity check compares them.
ROPE_FIELDS = ("rope_type", "rope_theta", "rope_params", "rotary_dim", "pretrain_base", "train_len",
               "tune_len", "pretrain_base_source", "train_len_source", "tune_len_source")


@dataclass
class PreparedSetting:
    """One setting after preflight. `config` is the overridden config (None: unreadable, dry run only)."""

    setting: Setting
    label: str
    config: Any
    tokenizer: Any
    fingerprint: str | None  # of the overridden config + weights (the cell keys' `fingerprint`)
    model_fingerprint: str | None  # of the checkpoint alone (config before the override + weights)
    rope: dict[str, Any]
    states: dict[str, Any] = field(default_factory=dict)
    available: dict[str, int | None] = field(default_factory=dict)
    sample_hashes: dict[str, list[str] | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # dry run: what could not be read, and so is not checked


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


def _remote_data(spec: TaskSpec) -> bool:
    """The task reads an `hf:` corpus or source (streamed from the hub)."""
    values = [spec.params.corpus, *spec.params.options.values()]
    return any(isinstance(v, str) and v.startswith("hf:") for v in values)


def _rope_identity(setting: Setting, config) -> tuple[Any, dict[str, Any], str, str]:
    """(overridden config, RoPE fields as records carry them, fingerprint, label) without loading weights:
    the same steps as models.load, so the values equal the loaded model's (the fingerprint covers the
    overridden config: a RoPE change changes it too)."""
    law = rope_config.law_inputs(config, setting.override)
    overridden = copy.deepcopy(config)
    spec = rope_config.apply_override(overridden, setting.override)
    manifest = models.rope_manifest(overridden, spec, law, {}, setting.override.changes_base())
    rope = {k: manifest[k] for k in ROPE_FIELDS}
    rope["rope_params"] = json.dumps(rope["rope_params"], sort_keys=True)
    fingerprint = models.model_fingerprint(models.resolve_model_path(setting.model), overridden,
                                           setting.revision)
    return overridden, rope, fingerprint, setting.label or models.default_label(setting.model, manifest)


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


def preflight(settings: list[Setting], tasks: list[TaskSpec], warn,
              tolerant: bool = False) -> list[PreparedSetting]:
    """Validate every setting and task before anything is written; `tolerant` (dry run): see the docstring."""
    for spec in tasks:
        validate_params(spec.params)
        get_task(spec.name)
    prepared: list[PreparedSetting] = []
    for setting in settings:
        notes: list[str] = []
        try:
            config = models.load_config(setting.model, setting.revision, setting.trust_remote_code)
        except InputError as exc:
            if not (tolerant and is_hub_id(setting.model)):
                raise
            notes.append(f"config of {setting.model!r} not available offline ({exc}): no memory estimate, "
                         "samples not checked")
            config = None
        if config is None:
            prep = PreparedSetting(setting, setting.label or setting.model, None, None, None, None, {},
                                   notes=notes)
        else:
            own = models.model_fingerprint(models.resolve_model_path(setting.model), config, setting.revision)
            overridden, rope, fingerprint, label = _rope_identity(setting, config)
            prep = PreparedSetting(setting, label, overridden, _tokenizer(setting, tolerant, notes),
                                   fingerprint, own, rope, notes=notes)
        for spec in tasks:
            if spec.applies_to(prep.label):
                _prepare_task(prep, spec, warn, tolerant)
        prepared.append(prep)
    labels = [p.label for p in prepared]
    for label in labels:
        if labels.count(label) > 1:  # one label is one curve: two settings would mix in it
            raise InputError(f"several settings get the label {label!r}: give each setting its own label")
    return prepared


def _prepare_task(prep: PreparedSetting, spec: TaskSpec, warn, tolerant: bool) -> None:
    name = spec.name
    prep.states[name], prep.available[name], prep.sample_hashes[name] = None, None, None
    if prep.tokenizer is None:
        return
    if spec.params.bos and prep.tokenizer.bos_token_id is None:
        spec.params.bos = False  # BOS by default only when the tokenizer has one (docs/design.md)
    task = get_task(name)
    try:
        ready = task.prepare(Preflight(prep.tokenizer, spec.params, warn))
    except InputError as exc:
        if not (tolerant and _remote_data(spec)):
            raise
        prep.notes.append(f"{name}: data not available offline ({exc}): samples not checked")
        return
    prep.states[name], prep.available[name] = ready.state, ready.available
    prep.sample_hashes[name] = task.samples_hash(ready.state)
