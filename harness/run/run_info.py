"""run.json: what ran, where, with which versions and commit, so a result folder explains itself."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.run.store import Store

if TYPE_CHECKING:
    from harness.run.suite import RunOptions


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("rope-harness", "torch", "transformers", "datasets", "pandas", "matplotlib", "safetensors",
                 "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    return out


def _git_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_json(options: RunOptions, store: Store, started: float, ended: float | None,
                   manifests: dict[str, Any], prepared: list, counts: Counter) -> None:
    """Written when the run folder opens and again at the end (atomically), one file per rank."""
    import platform

    import torch

    rank = store.rank
    info = {
        "command": options.command, "suite": options.suite, "versions": _versions(),
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                   else platform.processor() or platform.machine()),
        "git_commit": _git_commit(), "rank": rank, "world_size": store.world,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended)) if ended else None,
        "chunk_size": options.chunk_size, "max_memory": options.max_memory,
        "settings": manifests,
        "samples_available": {p.label: {name: t.available for name, t in p.tasks.items()} for p in prepared},
        "cells": dict(counts),
    }
    name = "run.json" if store.world <= 1 else f"run.rank{rank}.json"
    tmp = store.folder / f".{name}.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str))
    tmp.replace(store.folder / name)
