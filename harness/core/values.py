"""Values from the command line or a suite: sizes, lengths (4k = 4096), finite numbers, comma lists, RoPE
parameters, safe folder names.

Each parser returns the value or raises InputError naming the flag and an example of a good value.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re

from harness.core.errors import InputError


def parse_size(text: str) -> int:
    """'24GiB', '500M', '2e9' -> bytes (a positive, finite size). KiB/MiB/GiB/TiB and bare K/M/G/T are
    powers of 1024; KB/MB/GB/TB powers of 1000, as accelerate reads them (1GB = 1e9 bytes)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?B)?\s*", text or "", re.IGNORECASE)
    try:
        number = float(match.group(1)) if match else math.nan
    except ValueError:  # '1.5.5G' passes the pattern but is no number
        number = math.nan
    decimal = bool(match and match.group(3) and match.group(3).lower() == "b" and match.group(2))
    step = 1000 if decimal else 1024
    scale = step ** "KMGT".find(match.group(2).upper()) * step if match and match.group(2) else 1
    if not (math.isfinite(number) and number * scale >= 1):
        raise InputError(f"--max-memory {text!r} is not a positive size: use e.g. 8GiB, 500MiB or 2e9")
    if number * scale < 1 << 20:  # '--max-memory 24' meant GiB: 24 bytes would only ever record oom
        raise InputError(f"--max-memory {text!r} is {int(number * scale)} bytes, less than 1 MiB: give the "
                         f"unit, e.g. {match.group(1)}GiB")
    return int(number * scale)


_LENGTH = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kK]?)\s*")


def length_value(text: str) -> int | None:
    """'4096', '1e3', '4k' / '32K' (multiples of 1024: 4096, 32768), '1.5k' (1536) -> int; None when the
    text is no whole number of tokens ('64.5', 'inf', '0.1k')."""
    match = _LENGTH.fullmatch(str(text))
    if not match:
        return None
    try:
        value = float(match.group(1)) * (1024 if match.group(2) else 1)
    except (ValueError, OverflowError):
        return None
    return int(value) if math.isfinite(value) and value.is_integer() else None


def _signed_length(item: str) -> int | None:
    """length_value with a sign: '-128' -> -128 (an integer, if no length), '-x' -> None."""
    value = length_value(item[1:] if item[:1] == "-" else item)
    return None if value is None else -value if item[:1] == "-" else value


def parse_lengths(text: str) -> list[int]:
    """'1024,2048', '4k,8k' or '1e3' -> sorted unique ints; '64.5' or 'inf' are refused, never truncated, and
    so are whole numbers below 2 ('-128', '0', '1': a length needs a token to predict after the first)."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    numbers = [_signed_length(x) for x in items]
    if not numbers or None in numbers:
        raise InputError(f"--lengths {text!r} is not a comma list of integers: use e.g. "
                         "--lengths 1024,2048,4096 or 1k,2k,4k (k = 1024)")
    small = [x for x, n in zip(items, numbers, strict=True) if n < 2]
    if small:
        which = ("" if len(items) == 1 else f"{small[0]} is not a length, " if len(small) == 1
                 else f"{', '.join(small[:-1])} and {small[-1]} are not lengths, ")
        raise InputError(f"--lengths {text}: {which}a length must be a whole number of tokens >= 2: use e.g. "
                         "--lengths 1024,2048 or 1k,2k (k = 1024)")
    return sorted(set(numbers))


def length_arg(text: str) -> int:
    """argparse type for one token count (--train-len, --tune-len, --chunk-size): '4096' or '4k'."""
    value = length_value(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens: pass e.g. 4096 or 4k")
    return value


length_arg.__name__ = "length"


def batch_value(value) -> int | str | None:
    """--batch-size / a suite's batch_size: a whole number >= 1 or "auto"; None when it is neither."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    whole = length_value(value) if isinstance(value, str) else None
    return whole if whole is not None and whole >= 1 else None


def batch_arg(text: str) -> int | str:
    """argparse type for --batch-size: a whole number >= 1 or auto."""
    value = batch_value(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a batch size: pass a whole number >= 1 or auto")
    return value


batch_arg.__name__ = "batch size"


def float_list(text: str) -> list[float]:
    """argparse type for a comma list of finite numbers ('1.5,2'); with action='extend' a flag may also
    be repeated (--factor 1.5 --factor 2)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of numbers: pass e.g. 1.5 or 1.5,2")
    return values


float_list.__name__ = "number list"


def safe_name(text: str, fallback: str = "run") -> str:
    """A label as one safe folder name: letters (any script), digits and ._- only, never hidden, '.', '..' or
    starting with '-' ('../x' -> 'x', 'b=1e6 tuned@1024' -> 'b_1e6_tuned_1024', '长上下文' kept). A label that
    loses characters other than ASCII punctuation (emoji) gets a short hash of itself, so two such labels
    never share a folder."""
    name = re.sub(r"[^\w.-]+", "_", text)
    name = name.lstrip("._-").rstrip(".")[:120]
    if any(not (c.isalnum() or c.isascii()) for c in text):
        name = f"{name or fallback}_{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return name or fallback


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
    if (parsed is None or isinstance(parsed, (str, dict))
            or (isinstance(parsed, float) and not math.isfinite(parsed))):
        raise InputError(f"--rope-param {text!r}: the value must be a number, a JSON list or true/false: "
                         f"e.g. --rope-param {key.strip()}=32")
    return key.strip(), parsed


def token_count(text: str) -> int | float:
    """A token count for the law: '4096', '1.6e4', '4k' (= 4096; integral values become int)."""
    whole = length_value(text)
    if whole is not None:
        return whole
    value = float(text)
    return int(value) if value.is_integer() else value


token_count.__name__ = "length"  # argparse names the type in its error: "invalid length value: 'x'"


def law_override(text: str) -> tuple[str | None, float]:
    """`report --pretrain-base/--train-len/--tune-len` values: 'VALUE' (every setting) or 'LABEL=VALUE' (one;
    split at the last '=', so labels such as 'b=1e4' work: 'b=1e4=10000'); k = 1024 for lengths."""
    label, _, value = text.rpartition("=")
    number = length_value(value) if value.lower().endswith("k") else None
    try:
        number = float(value) if number is None else number
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not VALUE or LABEL=VALUE with a positive number: pass "
                                         "e.g. 1e4, 2k, or 'b=1e6=10000'")
    return (label or None), number


def fmt_size(n_bytes: float) -> str:
    """A memory size readable at any budget: GiB from 1 GiB up, else MiB ('0.00 GiB' would hide MiB)."""
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def fmt_base(value) -> str:
    """A RoPE base the same way everywhere: 40, 500, 1e4, 5e5, 1.5e6 (never 10000 / 1e+06)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    if not math.isfinite(number):
        return ""
    if abs(number) < 1e4:
        return f"{number:.4g}"
    mantissa, exponent = f"{number:.3e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"
