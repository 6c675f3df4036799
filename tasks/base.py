"""The one small interface every task implements; the runner and the report rely on nothing else.

A task declares its options once (`options`: they become its `run` flags and its suite keys) and its
measured-length definitions once (`measures`, the default first). It turns its parameters into cells,
builds what every cell needs before any model is loaded (`prepare`, which returns the task's own typed
state), groups cells that can share work (perplexity: every length of one sample from one forward
pass), and scores a group with the engine. It never touches attention, caches or chunking (the
engine's job) and never writes files except through `RunContext.write_side`.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

from harness.core.contract import Engine
from harness.core.errors import InputError
from harness.core.metrics import MeasureSpec
from harness.core.options import Option

State = TypeVar("State")


@dataclass(frozen=True, order=True)
class Cell:
    """One unit of the grid inside a setting: a record is written per cell."""

    length: int
    depth: float | None
    sample: int


@dataclass(frozen=True)
class TaskParams:
    """Parameters shared by every task plus the task's own options (from CLI flags or a suite); frozen, the
    options read-only: one TaskParams may serve several settings (the run plan derives each setting's own)."""

    lengths: tuple[int, ...]
    samples: int = 1
    seed: int = 0
    corpus: str = "stdlib"
    bos: bool = True  # asked; a setting's own params say whether its tokenizer gets one (corpus.bos_ids)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(self.lengths))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


@dataclass
class Preflight:
    """What `prepare` may use: the tokenizer and parameters, no model (it runs before any is loaded)."""

    tokenizer: Any
    params: TaskParams
    warn: Callable[[str], None] = print
    # another model by name -> (its tokenizer, its fingerprint), read without weights (the run plan's service)
    describe_model: Callable[[str], tuple[Any, str]] | None = None


@dataclass
class Prepared(Generic[State]):
    """What `prepare` returns: the task's own state and, when the data has fewer samples than asked, how
    many."""

    state: State
    available: int | None = None


def _discard(stem: str, row: dict[str, Any]) -> None:
    """write_side of a context that keeps no side files."""


@dataclass
class RunContext:
    """What a task may use while scoring: the engine, the tokenizer, its prepared state, a sink for side
    files."""

    engine: Engine | Any
    tokenizer: Any
    params: TaskParams
    state: Any = None
    manifest: dict[str, Any] = field(default_factory=dict)
    base_record: dict[str, Any] = field(default_factory=dict)
    write_side: Callable[[str, dict[str, Any]], None] = _discard
    warn: Callable[[str], None] = print
    run_dir: Path | None = None  # the run folder, to read back side files (None: a context without one)
    # another model by name -> its engine on this engine's device and dtype (the runner's service)
    load_engine: Callable[[str], Engine] | None = None

    @property
    def preflight(self) -> Preflight:
        return Preflight(self.tokenizer, self.params, self.warn)


class Task:
    """Base class: override `cells`, `prepare` and `score_group`; the rest has sensible defaults."""

    name: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    measures: ClassVar[tuple[MeasureSpec, ...]] = ()  # measured-length definitions, the default first
    generates: ClassVar[bool] = False  # generates after its prompts: plans count the cache kept for decoding
    needs_prompt_logprobs: ClassVar[bool] = False  # scores every prompt token: a server must return them all

    @classmethod
    def option_names(cls) -> list[str]:
        return [o.name for o in cls.options]

    def identity(self, params: TaskParams) -> dict[str, Any]:
        """Task parameters that change a cell's result: part of the resume key."""
        return {"corpus": params.corpus, "bos": params.bos, **params.options}

    def cells(self, params: TaskParams) -> list[Cell]:
        raise NotImplementedError

    def prepare(self, pre: Preflight) -> Prepared:
        """Build what every cell needs once (samples, prompts' parts). May raise InputError."""
        return Prepared(None)

    def samples_hash(self, state: Any) -> list[str] | None:
        """One hash per prepared sample (of its tokens), in sample order, or None (the default) for a task
        without token samples. Records carry their sample's hash: a rerun whose corpus text changed under the
        same corpus spec is refused, not mixed into the folder's aggregates."""
        return None

    def state_of(self, ctx: RunContext) -> Any:
        """The prepared state of `ctx`, prepared now when the caller built the context by hand."""
        if ctx.state is None:
            ctx.state = self.prepare(ctx.preflight).state
        return ctx.state

    def groups(self, ctx: RunContext, cells: list[Cell]) -> list[list[Cell]]:
        """Cells that are scored together; default: each cell alone."""
        return [[c] for c in cells]

    def passes(self, params: TaskParams, cells: list[Cell], length_dependent: bool) -> list[tuple[int, int]]:
        """The forward passes scoring `cells` takes, each (tokens, greedy steps after it): what the dry run's
        time estimate counts. Default: a generating task prefills each cell's prompt and decodes up to its
        `max_new_tokens` (32 where it has none), and scores its answer in a pass of its own where RoPE depends
        on the length (the engine's two prefills); any other task runs one pass per cell."""
        if not self.generates:
            return [(cell.length, 0) for cell in cells]
        steps = int(params.options.get("max_new_tokens") or 32)
        return [(cell.length, steps) for cell in cells] + ([(c.length, 0) for c in cells] if length_dependent
                                                            else [])

    def score_group(self, ctx: RunContext, cells: list[Cell]) -> list[dict[str, Any]]:
        """Metrics per cell, in the order given. Raise on failure; the runner records it."""
        raise NotImplementedError


def batch_groups(engine: Engine | None, units: list[list[Cell]],
                 generation: bool = False) -> list[list[Cell]]:
    """Units (cells scored together) merged into groups of up to `engine.batch_size(L)` units whose longest
    length L is the same: the units of a group share forwards. Order is kept when nothing batches; else units
    are ordered by that length first (stable), so equal lengths meet."""
    def longest(unit: list[Cell]) -> int:
        return max(c.length for c in unit)

    sizes = {n: engine.batch_size(n, generation) if engine is not None else 1 for n in map(longest, units)}
    if any(size > 1 for size in sizes.values()):
        units = sorted(units, key=longest)
    groups: list[list[list[Cell]]] = []
    for unit in units:
        last = groups[-1] if groups else None
        if last and longest(last[0]) == longest(unit) and len(last) < sizes[longest(unit)]:
            last.append(unit)
        else:
            groups.append([unit])
    return [[cell for unit in group for cell in unit] for group in groups]


# ------------------------------------------------------------------------------------------ registry


def task_names() -> list[str]:
    """Every module or package in `tasks/` that exports TASK (helper modules are skipped)."""
    import tasks

    names = []
    for info in pkgutil.iter_modules(tasks.__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        if hasattr(importlib.import_module(f"tasks.{info.name}"), "TASK"):
            names.append(info.name)
    return sorted(names)


def get_task(name: str) -> Task:
    """tasks.<name>.TASK (an unknown name is an InputError naming the known tasks). A known name is one
    import lookup; the folder is scanned only to name the alternatives."""
    module = None
    if isinstance(name, str) and name.isidentifier() and not name.startswith("_") and name != "base" \
            and importlib.util.find_spec(f"tasks.{name}") is not None:
        module = importlib.import_module(f"tasks.{name}")
    if module is None or not hasattr(module, "TASK"):
        raise InputError(f"unknown task {name!r}: use --task with one of {', '.join(task_names())}")
    return module.TASK


def all_options() -> dict[str, Option]:
    """Every task's options by name, each once (shared options such as --depths are declared once)."""
    options: dict[str, Option] = {}
    for name in task_names():
        for option in get_task(name).options:
            options.setdefault(option.name, option)
    return options
