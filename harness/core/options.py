"""One option, declared once: its `run` flag, its suite key and its help (tasks, settings and the run alike).

A task declares its options on the task (`Task.options`); a setting's and the run's are declared in
harness/run/suite.py (`SETTING_OPTIONS`, `RUN_OPTIONS`). The CLI builds every `run` flag from these, the
suite reader checks every key against them, and nothing restates a flag, a key, a choice or a default.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """`name` is the suite key (and, with dashes, the flag); `type` is what argparse converts a flag's text to
    (bool: a flag without a value); `parse` turns a flag's text into the option's value (a comma list,
    `KEY=VALUE`); `kind` is the suite value's type where it is not `type` (a table, a length such as "4k");
    `cli` is the flag where it is not `--name` (`--no-probe` for an option that defaults to True)."""

    name: str
    help: str
    type: type | Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    kind: Any = None
    cli: str | None = None
    default: Any = None
    repeat: bool = False  # the flag may be given several times: its values are gathered in a list

    @property
    def flag(self) -> str:
        return self.cli or "--" + self.name.replace("_", "-")

    @property
    def suite_kind(self) -> Any:
        return self.kind if self.kind is not None else self.type

    def add_to(self, parser: Any) -> None:
        """This option's flag on an argparse parser (or group); its value lands under `name`, None when the
        flag is not given."""
        if self.type is bool:
            negated = self.default is True  # --no-X sets X False
            parser.add_argument(self.flag, dest=self.name, action="store_const", const=not negated,
                                default=None, help=self.help)
            return
        parser.add_argument(self.flag, dest=self.name, type=None if self.repeat else self.type,
                            action="append" if self.repeat else "store", default=None, choices=self.choices,
                            metavar=self.metavar, help=self.help or argparse.SUPPRESS)

    def from_flag(self, value: Any) -> Any:
        """A parsed flag's value as the option value; None = not given."""
        if value is None:
            return None
        if self.repeat:
            return [self.parse(v) if self.parse else v for v in value]
        return self.parse(value) if self.parse is not None else value
