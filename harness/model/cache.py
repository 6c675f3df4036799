"""Where rope-harness keeps what it builds once (dequantised GGUF folders, assembled packaged models), and
the files' SHA-256 that names them. No harness imports: the lowest module of harness.model."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """$ROPE_HARNESS_CACHE, else $XDG_CACHE_HOME/rope-harness, else ~/.cache/rope-harness."""
    if os.environ.get("ROPE_HARNESS_CACHE"):
        return Path(os.environ["ROPE_HARNESS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rope-harness"


@functools.lru_cache(maxsize=16)
def sha256(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a whole file, computed once per file version (size, mtime) in a process."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)
