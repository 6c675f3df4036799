"""RULER's generator arguments as task options, each declared once (the flag keeps RULER's argument name:
`--num-needle-k` is niah.py's `--num_needle_k`). Defaults are per config (scripts/synthetic.yaml) and
applied by each family's `resolve`."""

from __future__ import annotations

from typing import Any

from harness.core.errors import InputError
from tasks.base import Option
from tasks.ruler.words import KINDS

HAYSTACK = Option("haystack", "haystack text. passkey: filler or corpus; RULER niah_*/vt: noise, essay (the "
                  "shipped public-domain novel), needle (niah), or a text FILE, folder, .jsonl or hf:NAME "
                  "(default: the RULER config's)", metavar="KIND|FILE")
TYPE_NEEDLE_K = Option("type_needle_k", "RULER niah: kind of the needle keys (default: the config's)",
                       choices=KINDS)
TYPE_NEEDLE_V = Option("type_needle_v", "RULER niah: kind of the needle values (default: the config's)",
                       choices=KINDS)
NUM_NEEDLE_K = Option("num_needle_k", "RULER niah: keys hidden (default: the config's; at least "
                      "--num-needle-q)", type=int, metavar="N")
NUM_NEEDLE_V = Option("num_needle_v", "RULER niah: values per key (default: the config's)", type=int,
                      metavar="N")
NUM_NEEDLE_Q = Option("num_needle_q", "RULER niah: keys asked for at once (default: the config's)", type=int,
                      metavar="N")
NUM_CHAINS = Option("num_chains", "RULER vt: variable chains (default 1)", type=int, metavar="N")
NUM_HOPS = Option("num_hops", "RULER vt: hops per chain (default 4)", type=int, metavar="N")
NUM_FEWSHOT = Option("num_fewshot", "RULER vt/cwe: worked examples before the task (default: RULER's one "
                     "wherever it takes at most a quarter of the prompt, as at RULER's lengths, none below; "
                     "1: always; 0: never)", type=int, metavar="N")
FEWSHOT_SHARE = 4  # by default a worked example is kept where it takes at most 1/4 of the prompt


def keep_examples(tokens: int, length: int, asked: int | None) -> bool:
    """Whether the worked examples (`tokens` long) go into a prompt of `length` tokens: as asked, else
    (default) where they take at most 1/FEWSHOT_SHARE of it (RULER's 500-token example from 2K tokens on)."""
    return bool(asked) if asked is not None else tokens * FEWSHOT_SHARE <= length
FREQ_CW = Option("freq_cw", "RULER cwe: repeats of each common word (default RULER's: 30, or 6 below 4K)",
                 type=int, metavar="N")
FREQ_UCW = Option("freq_ucw", "RULER cwe: repeats of each uncommon word (default RULER's: 3, or 1 below 4K)",
                  type=int, metavar="N")
NUM_CW = Option("num_cw", "RULER cwe: common words asked for (default 10)", type=int, metavar="N")
ALPHA = Option("alpha", "RULER fwe: Zipf exponent of the word counts (default 2.0)", type=float, metavar="A")
QA_FILE = Option("qa_file", "RULER qa_1/qa_2: a local SQuAD (qa_1) or HotpotQA (qa_2) JSON file in RULER's "
                 "format; omitted: the offline synthetic QA over the shipped novel", metavar="FILE.json")


def number(options: dict[str, Any], key: str, default: float | None, low: float, high: float | None = None,
           whole: bool = True) -> Any:
    """A numeric option with its default; out of range (or not whole where it must be) -> InputError."""
    value = options.get(key)
    if value is None:
        return default
    flag = "--" + key.replace("_", "-")
    try:
        parsed = float(value)
        ok = not isinstance(value, bool) and (not whole or parsed == int(parsed))
    except (TypeError, ValueError):
        ok = False
    if not ok or parsed < low or (high is not None and parsed > high):
        bound = f"from {low:g} to {high:g}" if high is not None else f">= {low:g}"
        kind = "a whole number" if whole else "a number"
        raise InputError(f"{flag} {value!r} must be {kind} {bound}: e.g. {flag} "
                         f"{default if default is not None else low:g}")
    return int(parsed) if whole else parsed


def choice(options: dict[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = options.get(key) or default
    if value not in allowed:
        flag = "--" + key.replace("_", "-")
        raise InputError(f"{flag} {value!r} is unknown: use one of {', '.join(allowed)}")
    return value
