"""The passkey task's options with their defaults applied (one place, read by the task and the layout)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.errors import InputError
from tasks.base import TaskParams
from tasks.generation import int_option, parse_depths

NAMES = ("Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliett",
         "Kilo", "Lima", "Mike", "November", "Oscar", "Papa", "Quebec", "Romeo", "Sierra", "Tango",
         "Uniform", "Victor", "Whiskey", "Xray", "Yankee", "Zulu")

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_KEY_DIGITS = 5
HAYSTACKS = ("filler", "corpus")


@dataclass(frozen=True)
class Options:
    """The task's options with defaults applied (None in TaskParams.options = the user gave nothing)."""

    depths: tuple[float, ...] = DEFAULT_DEPTHS
    key_digits: int = DEFAULT_KEY_DIGITS
    haystack: str = "filler"
    needles: int = 1
    chat_template: bool = False
    max_new_tokens: int = DEFAULT_KEY_DIGITS + 4

    @classmethod
    def from_params(cls, params: TaskParams) -> Options:
        o = params.options or {}
        depths = tuple(parse_depths(o.get("depths")) or DEFAULT_DEPTHS)
        digits = int_option(o, "key_digits", "--key-digits", DEFAULT_KEY_DIGITS, 1, 64)
        haystack = o.get("haystack") or "filler"
        if haystack not in HAYSTACKS:
            raise InputError(f"--haystack {haystack!r} is unknown: "
                             "use --haystack filler or --haystack corpus")
        needles = int_option(o, "needles", "--needles", 1, 1, len(NAMES))
        chat = bool(o.get("chat_template") or False)
        new_tokens = int_option(o, "max_new_tokens", "--max-new-tokens", 32 if chat else digits + 4, 1, 4096)
        return cls(depths, digits, haystack, needles, chat, new_tokens)
