"""The one small interface every task implements; the runner and report rely on nothing else.

A task turns its parameters into cells, groups cells that can share work (perplexity: every length of
one sample from one forward pass), and scores a group with the engine. It never touches attention,
caches or chunking (that is the engine's job) and never writes files except through `ctx`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
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


# ------------------------------------------------------------------ helpers shared by generation tasks

_FIRST_INTEGER = re.compile(r"\d+")
_CHAT_SENTINEL = "\ue000ROPE-HARNESS-CONTENT\ue000"


def first_integer(text: str) -> str | None:
    """The first run of digits in a generation (how passkey-style answers are read)."""
    match = _FIRST_INTEGER.search(text)
    return match.group(0) if match else None


def int_option(options: dict[str, Any], key: str, flag: str, default: int, low: int, high: int | None = None) -> int:
    """A whole-number task option (CLI or suite) with its default; out of range -> InputError naming the flag."""
    from harness.errors import InputError

    value = options.get(key)
    if value is None:
        return default
    try:
        number = int(value)
        whole = not isinstance(value, bool) and number == float(value)
    except (TypeError, ValueError):
        whole = False
    bound = f"from {low} to {high}" if high is not None else f">= {low}"
    if not whole or number < low or (high is not None and number > high):
        raise InputError(f"{flag} {value!r} must be a whole number {bound}: e.g. {flag} {default}")
    return number


def parse_depths(value: Any) -> list[float] | None:
    """`--depths` from the CLI (comma string) or a suite (list): sorted fractions in [0, 1]; None if not given."""
    from harness.errors import InputError

    if value is None or (isinstance(value, (str, list, tuple)) and not value):
        return None
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    depths = set()
    for item in items:
        try:
            depth = float(item)
        except (TypeError, ValueError):
            raise InputError(f"--depths {value!r}: {item!r} is not a number: pass fractions like 0,0.5,1") from None
        if not 0.0 <= depth <= 1.0:
            raise InputError(f"--depths {value!r}: {depth:g} is outside [0, 1]: pass fractions like 0,0.5,1")
        depths.add(depth)
    return sorted(depths)


def chat_wrapper(tokenizer) -> tuple[str, str]:
    """(text before, text after) a user turn in the tokenizer's chat template, generation prompt included."""
    from harness.errors import InputError

    if not getattr(tokenizer, "chat_template", None):
        raise InputError("--chat-template: this model's tokenizer has no chat template: drop --chat-template")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _CHAT_SENTINEL}], tokenize=False,
                                             add_generation_prompt=True)
    if not isinstance(rendered, str) or rendered.count(_CHAT_SENTINEL) != 1:
        raise InputError("--chat-template: the chat template does not render a user message verbatim: drop --chat-template")
    pre, post = rendered.split(_CHAT_SENTINEL)
    return pre, post
