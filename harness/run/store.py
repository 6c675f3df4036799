"""Append-only record store: one JSON line per finished cell, written whole and fsynced.

A crash (kill -9 at any moment) can leave at most one torn last line; opening the store for writing
cuts it off, so a resumed run appends clean lines and ends with the same cells and numbers as an
uninterrupted run. Each rank writes its own shard; readers glob every shard.

A cell may be recorded more than once (a failed cell is retried by the next run). One rule, in one
function (`keep_latest`), settles which record is the cell's everywhere (resume, exit code, console table,
report): its last ok record, else its last record. A measured cell stays measured: no later record of the
same cell key can discard its number. Readers see a folder's lines in the order they
were recorded: each shard in file order, shards merged by `recorded_at` (unix seconds; lines without it,
written before runs healed, first), so "last" is the same for every reader even when a later run with
another world size healed a cell into another shard.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.core.errors import InputError, one_line
from harness.data.jsonl import lenient_objects


def shard_name(stem: str, rank: int, world: int) -> str:
    return f"{stem}.jsonl" if world <= 1 else f"{stem}.rank{rank}.jsonl"


def _repair_torn_tail(path: Path) -> None:
    """Drop a partial last line left by a crash mid-write (lines are appended whole, so only the last)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)


def _recorded(row: dict[str, Any]) -> float:
    stamp = row.get("recorded_at")
    return float(stamp) if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) else 0.0


def read_jsonl(folder: Path, stem: str, notes: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every complete line of every shard `<stem>*.jsonl` in `folder` (lenient: see harness.data.jsonl), in
    the order they were recorded (see the module docstring; a stable merge: each shard keeps its file
    order)."""
    paths = [p for p in sorted(folder.glob(f"{stem}*.jsonl")) if p.is_file()]
    yield from heapq.merge(*(lenient_objects(p, notes) for p in paths), key=_recorded)


def cell_id(record: dict[str, Any]) -> str:
    """A record's cell: its cell_key, or (for hand-written records without one) what the key is made of."""
    key = record.get("cell_key")
    if key:
        return str(key)
    return json.dumps([record.get(k)
                       for k in ("setting", "rope_hash", "task", "length", "depth", "sample", "seed")],
                      default=str)


def keep_latest(latest: dict[str, dict[str, Any]], record: dict[str, Any]) -> bool:
    """The one latest-record rule (see the module docstring): `record` becomes its cell's entry in `latest`
    unless the cell already has an ok record and this one is not ok. Whether it did."""
    key = cell_id(record)
    if latest.get(key, {}).get("status") == "ok" and record.get("status") != "ok":
        return False
    latest.pop(key, None)  # re-inserted: the mapping stays in the order its records were written
    latest[key] = record
    return True


def latest_records(folder: Path, notes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The latest record of every cell of a run folder (`keep_latest`), by cell_id, in recorded order."""
    latest: dict[str, dict[str, Any]] = {}
    if folder.exists():
        for record in read_jsonl(folder, "records", notes):
            keep_latest(latest, record)
    return latest


RECORD_KEYS = ("task", "setting", "length", "status")  # what every reader of a record relies on


class Store:
    """Writes records (and side files such as positions) of one rank into a run folder."""

    def __init__(self, folder: Path, rank: int = 0, world: int = 1):
        self.folder = folder
        self.rank, self.world = rank, world
        self._lock: Path | None = None

    def _path(self, stem: str) -> Path:
        return self.folder / shard_name(stem, self.rank, self.world)

    def open(self) -> None:
        """Create the folder, take the lock, repair torn tails. Called only once there is work to write."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the run folder {self.folder} ({one_line(exc)}): "
                             "pass a writable --out") from None
        self._lock = self.folder / (f".lock.rank{self.rank}" if self.world > 1 else ".lock")
        try:
            fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = self._lock.read_text().strip() or "0"
            if holder.isdigit() and _alive(int(holder)):
                raise InputError(f"another run (pid {holder}) is writing {self.folder}: wait for it or pass "
                                 "another --out") from None
            self._lock.unlink(missing_ok=True)  # stale lock of a killed run
            fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        for stem in ("records", "positions", "key_tokens"):
            _repair_torn_tail(self._path(stem))

    def close(self) -> None:
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None

    def append(self, stem: str, row: dict[str, Any]) -> None:
        """One os.write of the whole line, then fsync: a line is either fully there or not at all."""
        line = (json.dumps(row, allow_nan=True, default=str) + "\n").encode()
        fd = os.open(self._path(stem), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of every cell, any rank's (latest_records); a folder whose records lack the keys
        every record has (another tool's, or an older format's) is refused: new cells would mix with it."""
        latest = latest_records(self.folder)
        for record in latest.values():
            missing = [k for k in RECORD_KEYS if k not in record]
            if missing:
                raise InputError(f"{self.folder} holds records without {', '.join(missing)} (another tool's "
                                 "or an older format's): pass another --out")
        return latest

    def signature(self) -> tuple:
        """(name, size, mtime) of every records shard: equal signatures mean no record was added between."""
        if not self.folder.is_dir():
            return ()
        paths = sorted(p for p in self.folder.glob("records*.jsonl") if p.is_file())
        return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()  # our own pid: a lock left by an earlier in-process run
