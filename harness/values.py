"""Values from the command line or a suite: sizes, lengths, finite numbers, comma lists, RoPE parameters.

Each parser returns the value or raises InputError naming the flag and an example of a good value.
"""

from __future__ import annotations

import argparse
import json
import math
import re

from harness.errors import InputError


def parse_size(text: str) -> int:
    """'24GiB', '500M', '2e9' -> bytes (a positive, finite size)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?B)?\s*", text or "", re.IGNORECASE)
    try:
        number = float(match.group(1)) if match else math.nan
    except ValueError:  # '1.5.5G' passes the pattern but is no number
        number = math.nan
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()] if match else 1
    if not (math.isfinite(number) and number * scale >= 1):
        raise InputError(f"--max-memory {text!r} is not a positive size: use e.g. 8GiB, 500MiB or 2e9")
    if number * scale < 1 << 20:  # '--max-memory 24' meant GiB: 24 bytes would only ever record oom
        raise InputError(f"--max-memory {text!r} is {int(number * scale)} bytes, less than 1 MiB: give the unit, "
                         f"e.g. {match.group(1)}GiB")
    return int(number * scale)


def parse_lengths(text: str) -> list[int]:
    """'1024,2048' or '1e3' -> sorted unique ints; '64.5' or 'inf' are refused, never truncated."""
    try:
        numbers = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        numbers = [math.nan]
    if not all(math.isfinite(x) and x.is_integer() for x in numbers):
        raise InputError(f"--lengths {text!r} is not a comma list of integers: use e.g. --lengths 1024,2048,4096")
    return sorted({int(x) for x in numbers})


def finite_float(text: str) -> float:
    """argparse type for RoPE numbers: inf and nan would run and be recorded as a setting."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number: pass e.g. 1e6")
    return value


def parse_floats(text: str, flag: str) -> list[float]:
    """A comma list of numbers; an empty one is an error (it would silently mean the task's default)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise InputError(f"{flag} {text!r} is not a comma list of numbers: use e.g. {flag} 0,0.5,1")
    return values


def parse_param(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE as JSON (number, list, true/false): RoPE parameters are never free text, and a
    text value would only fail later, inside the model's RoPE init."""
    key, sep, value = text.partition("=")
    if not key.strip() or not sep:
        raise InputError(f"--rope-param {text!r} is not KEY=VALUE: e.g. --rope-param beta_fast=32")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if parsed is None or isinstance(parsed, (str, dict)) or (isinstance(parsed, float) and not math.isfinite(parsed)):
        raise InputError(f"--rope-param {text!r}: the value must be a number, a JSON list or true/false: "
                         f"e.g. --rope-param {key.strip()}=32")
    return key.strip(), parsed


def token_count(text: str) -> int | float:
    """A token count for the law: '4096', '1.6e4' (integral values become int)."""
    value = float(text)
    return int(value) if value.is_integer() else value


token_count.__name__ = "length"  # argparse names the type in its error: "invalid length value: 'x'"
