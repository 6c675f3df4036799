"""Loading run folders for the report: every run's records and positions as one frame each.

Kept apart from the analysis so that reading what `rope-harness run` wrote (torn lines of a killed run,
retried cells, the same setting label in several runs) is settled once, before anything is measured; the
files themselves are read by harness.run.store.read_jsonl, the one reader of run folders.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.core.errors import InputError, one_line
from harness.run.store import keep_latest, read_jsonl

# Columns that identify a setting's law inputs; copied from the records into summary.csv.
LAW_COLUMNS = ("model", "rope_type", "rope_theta", "pretrain_base", "train_len", "tune_len", "rotary_dim")
REQUIRED_COLUMNS = ("task", "setting", "length", "status")


@dataclass
class RunRecords:
    """Every run's records and positions, with a `run` column and unique `setting` labels."""

    records: pd.DataFrame
    positions: pd.DataFrame | None
    runs: list[tuple[str, Path, int]]
    notes: list[str] = field(default_factory=list)
    superseded: int = 0
    run_info: dict[str, dict] = field(default_factory=dict)  # run name -> its run.json ({} when absent)


def load_runs(run_dirs: Sequence[Path | str]) -> RunRecords:
    """Read records*.jsonl (+ positions*.jsonl) of each run; raises InputError for unusable input.

    A setting is (run, label, rope_hash). The same label in several runs is suffixed with " [run]"; within a
    run a label with several rope hashes gets " #hash". A cell recorded more than once (a retry after a
    failure) is read as resume and the console read it (harness.run.store.keep_latest).
    """
    if not run_dirs:
        raise InputError("no run folder given: pass one or more folders written by `rope-harness run`")
    notes: list[str] = []
    first: dict[Path, Path] = {}
    for d in run_dirs:
        first.setdefault(Path(d).resolve(), Path(d))
    dirs = list(first.values())
    if len(dirs) < len(run_dirs):  # `report a a` would list a twice (its records merge: same run name)
        notes.append(f"{len(run_dirs) - len(dirs)} run folder(s) given more than once were read once")
    frames, pos_frames, runs = [], [], []
    run_info: dict[str, dict] = {}
    superseded = 0
    for run_dir, name in zip(dirs, _run_names(dirs), strict=True):
        if not run_dir.is_dir():
            raise InputError(f"{run_dir}: no such folder: pass a run folder written by `rope-harness run`")
        files = sorted(f for f in run_dir.glob("records*.jsonl") if f.is_file())
        rows = list(read_jsonl(run_dir, "records", notes))
        latest: dict[str, dict] = {}
        for row in rows:
            keep_latest(latest, row)
        superseded += len(rows) - len(latest)
        rows = list(latest.values())
        if not rows:
            raise InputError(f"{run_dir}: no records (records*.jsonl missing or empty): pass a run folder "
                             "written by `rope-harness run`, or run it first")
        frame = pd.DataFrame(rows)
        missing = [c for c in REQUIRED_COLUMNS if c not in frame]
        if missing:
            raise InputError(f"{files[0]}: records lack {', '.join(missing)}: pass a folder whose "
                             "records.jsonl was written by `rope-harness run`")
        frame.insert(0, "run", name)
        frames.append(frame)
        run_info[name] = _run_json(run_dir, notes)
        runs.append((name, run_dir, len(frame)))
        pos_rows = list(read_jsonl(run_dir, "positions", notes))
        if pos_rows:
            pos = pd.DataFrame(pos_rows)
            # a pass interrupted between its positions and its records is rerun on resume: keep the last copy
            keys = [c for c in ("setting", "rope_hash", "sample", "length", "pos_start") if c in pos]
            pos = pos.drop_duplicates(subset=keys, keep="last")
            pos.insert(0, "run", name)
            pos_frames.append(pos)
    records = pd.concat(frames, ignore_index=True, sort=False)
    for col in ("depth", "seed", "sample", "rope_hash", "error", "law_assumes_finetune", *LAW_COLUMNS):
        if col not in records:
            records[col] = None
    records["length"] = pd.to_numeric(records["length"], errors="coerce")
    bad_len = records["length"].isna() | (records["length"] <= 0)
    if bad_len.any():
        notes.append(f"ignored {int(bad_len.sum())} record(s) without a positive length")
        records = records[~bad_len]
    records["rope_hash"] = records["rope_hash"].fillna("")
    positions = pd.concat(pos_frames, ignore_index=True, sort=False) if pos_frames else None
    records, positions = _unique_settings(records, positions)
    # one property of a setting (its base vs its checkpoint's): flagged by any of its records, older
    # rope-harness versions missed a return to the pre-training base
    records["law_assumes_finetune"] = records.groupby("setting")["law_assumes_finetune"].transform(
        lambda flags: bool(flags.fillna(False).astype(bool).any()))
    if superseded:
        notes.append(f"{superseded} failed record(s) were superseded by a later record of the same cell")
    return RunRecords(records.reset_index(drop=True), positions, runs, notes, superseded, run_info)


def _run_json(run_dir: Path, notes: list[str]) -> dict:
    """The run's run.json (command, commit, versions, device, times), {} when absent or unreadable."""
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        notes.append(f"{path}: unreadable run.json ({one_line(exc)}): no provenance for this run")
        return {}
    return info if isinstance(info, dict) else {}


def _run_names(run_dirs: list[Path]) -> list[str]:
    """Shortest unique names: folder name, else parent/name, else the whole path."""
    names = [d.name or str(d) for d in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in run_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in run_dirs]
    return names


def _unique_settings(records: pd.DataFrame, positions: pd.DataFrame | None
                     ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Relabel `setting` so that each (run, label, rope_hash) has its own; the label as run keeps
    `setting_label`."""
    keys = records[["run", "setting", "rope_hash"]].drop_duplicates()
    runs_per_label = keys.groupby("setting")["run"].nunique()
    hashes_per = keys.groupby(["run", "setting"])["rope_hash"].nunique()
    label = {}
    for run, setting, rope_hash in keys.itertuples(index=False):
        text = str(setting)
        if hashes_per[(run, setting)] > 1:
            text += f" #{str(rope_hash)[:6]}"
        if runs_per_label[setting] > 1:
            text += f" [{run}]"
        label[(run, setting, rope_hash)] = text

    def relabel(frame: pd.DataFrame) -> pd.Series:
        hashes = frame["rope_hash"].fillna("") if "rope_hash" in frame else pd.Series("", index=frame.index)
        keys = zip(frame["run"], frame["setting"], hashes, strict=True)
        return pd.Series([label.get((r, s, h), str(s)) for r, s, h in keys], index=frame.index)

    records = records.assign(setting_label=records["setting"], setting=relabel(records))
    if positions is not None and "setting" in positions:
        positions = positions.assign(setting=relabel(positions))
    return records, positions
