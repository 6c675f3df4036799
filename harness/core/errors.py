"""Bad-input errors: `InputError` (a one-line message naming the problem and the fix; exit code 2) and
its helpers."""

import os
from pathlib import Path


class InputError(Exception):
    """Raised for bad user input; the CLI prints it as one line and exits 2 (no traceback)."""


class Refusal(RuntimeError):
    """A cell failure a rerun repeats (an engine that does not serve the asked setting): its records say so
    (`retry: false`), and the console does not advise a rerun."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (type: message), fit for an error message or a record's error field;
    cut at `limit` characters so that a fix named after it stays readable."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    line = f"{type(exc).__name__}: {text}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def writable_folder(path: Path, flag: str) -> None:
    """An output folder that can never be made (a file in the way, no write permission) is bad input, told
    before any work instead of as a traceback after it."""
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                raise InputError(f"{flag} {path}: {existing} is a file, not a folder: pass another {flag}")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise InputError(f"{flag} {path}: cannot write in {existing}: pass a writable {flag}")
            return
