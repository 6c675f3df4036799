"""One record per finished cell, built in one place from typed parts (docs/design.md, "Records").

A record is a flat JSON object pandas loads without help: the setting's part (model, RoPE manifest fields,
law inputs and their sources, weights, fingerprints), the task's part (identity, corpus, seed), the cell's
part (length, depth, sample, its key and sample hash), the outcome (status, error, the plan that ran) and
the task's metrics. `build` is the only function that assembles one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

LAW_SOURCES = ("pretrain_base_source", "train_len_source", "tune_len_source")
WEIGHT_FIELDS = ("weights", "gguf_file", "gguf_sha256")  # GGUF checkpoints only (harness.model.gguf)
STATUSES = ("ok", "oom", "error")


@dataclass(frozen=True)
class SettingPart:
    label: str
    model: str
    manifest: dict[str, Any]  # the loaded model's RoPE manifest (harness.model.models.rope_manifest)
    rope_hash: str  # the one its cell keys use in this folder (run_plan.folder_rope_hash)
    dtype: str
    attn: str
    fingerprint: str
    model_fingerprint: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # a served setting: engine, engine_version

    def fields(self) -> dict[str, Any]:
        m = self.manifest
        return {"setting": self.label, "model": self.model, "rope_type": m["rope_type"],
                "rope_theta": m["rope_theta"], "rope_params": json.dumps(m["rope_params"], sort_keys=True),
                "rotary_dim": m["rotary_dim"], "pretrain_base": m["pretrain_base"],
                "train_len": m["train_len"], "tune_len": m["tune_len"], "rope_hash": self.rope_hash,
                "law_assumes_finetune": m["law_assumes_finetune"], "dtype": self.dtype, "attn": self.attn,
                "fingerprint": self.fingerprint,
                **{k: m[k] for k in LAW_SOURCES + WEIGHT_FIELDS if k in m},
                "model_fingerprint": self.model_fingerprint, **self.extra}


@dataclass(frozen=True)
class TaskPart:
    task: str
    seed: int
    corpus: str
    task_identity: str  # canonical JSON of the options that change a result

    def fields(self) -> dict[str, Any]:
        return {"task": self.task, "seed": self.seed, "corpus": self.corpus,
                "task_identity": self.task_identity}


@dataclass(frozen=True)
class CellPart:
    length: int
    depth: float | None
    sample: int
    cell_key: str
    sample_hash: str | None

    def fields(self) -> dict[str, Any]:
        return {"length": self.length, "depth": self.depth, "sample": self.sample, "cell_key": self.cell_key,
                "sample_hash": self.sample_hash}


@dataclass(frozen=True)
class Outcome:
    status: str  # one of STATUSES
    error: str | None  # one line, or None
    plan: str  # the plan that ran (or, for a cell that failed, the one planned)
    retry: bool = True  # a failed cell: whether a rerun may heal it (records of failed cells carry it)


def _bad_number(metrics: dict[str, Any]) -> str | None:
    return next((k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)), None)


def build(setting: SettingPart, task: TaskPart, cell: CellPart, outcome: Outcome,
          metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of one cell; a non-finite metric turns an ok cell into an error naming it."""
    record = {**setting.fields(), **task.fields(), **cell.fields(), "status": outcome.status,
              "error": outcome.error, "plan": outcome.plan, **(metrics or {})}
    if outcome.status != "ok":
        record["retry"] = outcome.retry
    bad = _bad_number(metrics or {})
    if bad and outcome.status == "ok":
        record.update(status="error", error=f"non-finite {bad} ({metrics[bad]})")
    record["recorded_at"] = round(time.time(), 3)
    return record
