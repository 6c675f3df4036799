"""What the longqa task asks of a data source (LongBench rows or the synthetic QA), so it never asks which.

A source is built from the options alone (`cells` and `identity` need no tokenizer), refusing the other
source's options; `prepare` then loads what every cell needs with the tokenizer and checks that the fixed
parts fit the shortest length; `build` makes one cell's prompt. The prepared source is the task's state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.core.errors import InputError
from tasks.base import Cell, Preflight, TaskParams
from tasks.generation import Wrap, encode, int_option, prompt_wrap


@dataclass
class QAPrompt:
    """One cell's prompt (exactly L tokens unless `--qa-pad none` left it short) and how to score it."""

    ids: list[int]
    max_new_tokens: int
    stop_ids: list[int]  # besides EOS (tokenizer and generation config), added at generation time
    answers: tuple[str, ...]
    metric: str
    first_line: bool = False
    answer_ids: list[int] | None = None  # synthetic: teacher-forced continuation
    record: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """One kind of long-QA data: subclasses set `foreign` and `refusal`, implement samples, load and build,
    and extend identity with their own options."""

    foreign: ClassVar[tuple[str, ...]]  # the other source's options: refused, they would change nothing
    refusal: ClassVar[str]  # the message for one of them: {flag} and {source} are filled in

    def __init__(self, options: dict[str, Any], cache: dict[Any, Any]) -> None:
        """Check and resolve the options; `cache` keeps data (LongBench rows) across calls of one task."""
        given = [k for k in self.foreign if options.get(k) not in (None, "", [])]
        if given:  # an option of the other source would be recorded in the identity but change nothing
            flag = "--" + given[0].replace("_", "-")
            raise InputError(self.refusal.format(flag=flag, source=options.get("source")))
        self.max_new_tokens: int | None = None  # None: the dataset's own budget
        if options.get("max_new_tokens") is not None:
            self.max_new_tokens = int_option(options, "max_new_tokens", "--max-new-tokens", 0, 1)
        self.chat_template = bool(options.get("chat_template"))
        self.cache = cache

    def prepare(self, pre: Preflight) -> None:
        """Load what every cell needs (before any model is loaded) and check the fixed parts fit."""
        self.tokenizer, self.params = pre.tokenizer, pre.params
        self.wrap: Wrap = prompt_wrap(pre.tokenizer, pre.params.bos, self.chat_template)
        self.load(min(pre.params.lengths), pre.warn)

    def head_ids(self, text: str) -> list[int]:
        """BOS (when on) + chat-template prefix + `text`."""
        return list(self.wrap.bos) + encode(self.tokenizer, self.wrap.pre + text)

    def identity(self) -> dict[str, Any]:
        """The resolved options that change a cell's result (part of the resume key)."""
        return {"max_new_tokens": self.max_new_tokens, "chat_template": self.chat_template}

    @abstractmethod
    def samples(self, params: TaskParams, warn: Callable[[str], None] | None = None) -> list[int]:
        """The cells' sample indices for params.samples."""

    @abstractmethod
    def load(self, shortest: int, warn: Callable[[str], None]) -> None:
        """prepare's own part: the source's data, and the check that its fixed parts fit `shortest`."""

    @abstractmethod
    def build(self, cell: Cell) -> QAPrompt:
        """The prompt of one cell (prepared sources only)."""


def check_fit(fixed: int, length: int, what: str) -> None:
    """The fixed parts must leave room for context: InputError naming the least length."""
    if fixed >= length:
        raise InputError(f"--lengths {length} is too small for longqa: "
                         f"{what} needs {fixed} tokens before any "
                         f"context: use lengths >= {fixed + 1} (or fewer distractors / a shorter template)")


def split_names(value: Any) -> list[str]:
    """A comma string or a list of names, blanks dropped."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(s).strip() for s in items if str(s).strip()]
