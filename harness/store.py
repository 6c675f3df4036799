"""Append-only record store: one JSON line per finished cell, written whole and fsynced.

A crash (kill -9 at any moment) can leave at most one torn last line; opening the store for writing
cuts it off, so a resumed run appends clean lines and ends with exactly the records of an
uninterrupted run. Each rank writes its own shard; readers glob every shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import InputError, one_line
from harness.jsonl import lenient_objects


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


def read_jsonl(folder: Path, stem: str, notes: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every complete record of every shard `<stem>*.jsonl` in `folder` (lenient: see harness.jsonl)."""
    for path in sorted(folder.glob(f"{stem}*.jsonl")):
        if path.is_file():
            yield from lenient_objects(path, notes)


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
            raise InputError(f"cannot create the run folder {self.folder} ({one_line(exc)}): pass a writable --out") from None
        self._lock = self.folder / (f".lock.rank{self.rank}" if self.world > 1 else ".lock")
        try:
            fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = self._lock.read_text().strip() or "0"
            if holder.isdigit() and _alive(int(holder)):
                raise InputError(f"another run (pid {holder}) is writing {self.folder}: wait for it or pass another --out") from None
            self._lock.unlink(missing_ok=True)  # stale lock of a killed run
            fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        for stem in ("records", "positions"):
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

    def finished_keys(self) -> set[str]:
        """Cells already recorded by any rank (ok or failed: a rerun does not duplicate them)."""
        if not self.folder.exists():
            return set()
        return {r["cell_key"] for r in read_jsonl(self.folder, "records") if "cell_key" in r}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()  # our own pid: a lock left by an earlier in-process run
