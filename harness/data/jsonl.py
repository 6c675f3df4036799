"""The one JSON-lines reader, with the two policies the project needs.

- strict (user input: a corpus or dataset file): every non-empty line must be JSON; the first that is not
  is an InputError naming its line.
- lenient (run folders we wrote ourselves): a line that is not a JSON object is skipped and counted, and so
  is a last line without its newline (the torn tail of a killed write: the store cuts it when it reopens).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.core.errors import InputError


def strict_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-empty line; a BOM is no error, bad JSON or bytes are."""
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                yield line_no, json.loads(raw.decode("utf-8-sig"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                raise InputError(f"{path}:{line_no} is not valid JSON ({why}): fix the line") from None


def lenient_objects(path: Path, notes: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every complete JSON-object line of `path`; the count of skipped lines goes to `notes` (if given)."""
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = None
            if line.endswith("\n"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
            if isinstance(row, dict):
                yield row
            else:
                bad += 1
    if bad and notes is not None:
        notes.append(f"{path}: skipped {bad} unreadable line(s) (e.g. a line cut by a kill)")
