"""The one small interface every task implements; the runner and report rely on nothing else.

A task turns its parameters into cells, groups cells that can share work (perplexity: every length of
one sample from one forward pass), and scores a group with the engine. It never touches attention,
caches or chunking (that is the engine's job) and never writes files except through `ctx`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from harness.engine import Engine


@dataclass(frozen=True, order=True)
class Cell:
    """One unit of the grid inside a setting: a record is written per cell."""

    length: int
    depth: float | None
    sample: int


@dataclass
class TaskParams:
    """Parameters shared by every task plus the task's own options (from CLI flags or a suite)."""

    lengths: list[int]
    samples: int = 1
    seed: int = 0
    corpus: str = "stdlib"
    bos: bool = True
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """What a task may use while scoring: the engine, the tokenizer, and a sink for side files."""

    engine: Engine
    tokenizer: Any
    params: TaskParams
    manifest: dict[str, Any]
    base_record: dict[str, Any]
    write_side: Callable[[str, dict[str, Any]], None]
    warn: Callable[[str], None]
    state: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class: override `cells`, `score_group`; the rest has sensible defaults."""

    name: ClassVar[str] = ""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Register task-only `run` flags (their dest names become `TaskParams.options` keys)."""

    @staticmethod
    def option_names() -> list[str]:
        """Names of this task's options, read from the parsed CLI/suite into TaskParams.options."""
        return []

    def identity(self, params: TaskParams) -> dict[str, Any]:
        """Task parameters that change a cell's result: part of the resume key."""
        return {"corpus": params.corpus, "bos": params.bos, **params.options}

    def cells(self, params: TaskParams) -> list[Cell]:
        raise NotImplementedError

    def prepare(self, ctx: RunContext) -> None:
        """Build what every cell needs once (samples, prompts). May raise InputError."""

    def groups(self, ctx: RunContext, cells: list[Cell]) -> list[list[Cell]]:
        """Cells that are scored together; default: each cell alone."""
        return [[c] for c in cells]

    def score_group(self, ctx: RunContext, cells: list[Cell]) -> list[dict[str, Any]]:
        """Metrics per cell, in the order given. Raise on failure; the runner records it."""
        raise NotImplementedError


def task_names() -> list[str]:
    """Every module in `tasks/` that defines TASK is a task: a new task is one new file."""
    import tasks

    names = []
    for info in pkgutil.iter_modules(tasks.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            names.append(info.name)
    return sorted(names)


def get_task_module(name: str):
    """Import tasks.<name> (raises InputError naming the known tasks)."""
    from harness.errors import InputError

    if name not in task_names():
        raise InputError(f"unknown task {name!r}: use --task with one of {', '.join(task_names())}")
    return importlib.import_module(f"tasks.{name}")


def get_task(name: str) -> Task:
    return get_task_module(name).TASK
