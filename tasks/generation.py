"""Helpers shared by the generation tasks (passkey, longqa), one copy each, and their shared options.

Both tasks build prompts of an exact token length from the model's own tokenizer, wrap them the same way
(BOS, chat template), score the same answer continuation and stop generating at the same ids; a fix to
any of these belongs to both, so it lives here once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from harness.core.errors import InputError
from harness.core.values import parse_floats
from harness.data.corpus import bos_ids
from tasks.base import Option

# the tasks parse --depths themselves (parse_depths: a flag's comma text or a suite's list, one message)
# the flag's text goes through the same comma-list parser as every other list flag (a suite gives a list)
DEPTHS = Option("depths", "comma list of needle depths in [0, 1]",
                parse=lambda text: parse_floats(text, "--depths"))
MAX_NEW_TOKENS = Option("max_new_tokens", "greedy tokens generated per answer", type=int)
CHAT_TEMPLATE = Option("chat_template", "wrap prompts in the tokenizer's chat template", type=bool)
SHARED_OPTIONS = (DEPTHS, MAX_NEW_TOKENS, CHAT_TEMPLATE)

_FIRST_INTEGER = re.compile(r"\d+")
_CHAT_SENTINEL = "\ue000ROPE-HARNESS-CONTENT\ue000"


def first_integer(text: str) -> str | None:
    """The first run of digits in a generation (how passkey-style answers are read)."""
    match = _FIRST_INTEGER.search(text)
    return match.group(0) if match else None


def int_option(options: dict[str, Any], key: str, flag: str, default: int, low: int,
               high: int | None = None) -> int:
    """A whole-number task option (CLI or suite) with its default; out of range -> InputError naming the
    flag."""
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
    """`--depths` from the CLI (comma string) or a suite (list): sorted fractions in [0, 1]; None if not
    given."""
    if value is None or (isinstance(value, (str, list, tuple)) and not value):
        return None
    if isinstance(value, str):
        items = value.split(",")
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    depths = set()
    for item in items:
        try:
            depth = float(item)
        except (TypeError, ValueError):
            raise InputError(f"--depths {value!r}: {item!r} is not a number: "
                             "pass fractions like 0,0.5,1") from None
        if not 0.0 <= depth <= 1.0:
            raise InputError(f"--depths {value!r}: {depth:g} is outside [0, 1]: pass fractions like 0,0.5,1")
        depths.add(depth)
    return sorted(depths)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens; no too-long warnings (long prompts are the point)."""
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) if text else []


def chat_wrapper(tokenizer) -> tuple[str, str]:
    """(text before, text after) a user turn in the tokenizer's chat template, generation prompt included."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("--chat-template: this model's tokenizer has no chat template: drop --chat-template")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _CHAT_SENTINEL}], tokenize=False,
                                             add_generation_prompt=True)
    if not isinstance(rendered, str) or rendered.count(_CHAT_SENTINEL) != 1:
        raise InputError("--chat-template: the chat template does not render a user message verbatim: "
                         "drop --chat-template")
    pre, post = rendered.split(_CHAT_SENTINEL)
    return pre, post


@dataclass(frozen=True)
class Wrap:
    """How a prompt's text is wrapped: the ids to put before it, and the chat turn around it (if any)."""

    bos: tuple[int, ...]  # (BOS,) or (): prepended as an id, never also written by the template
    pre: str = ""  # chat template text before the user turn
    post: str = ""  # after it, generation prompt included
    chat: bool = False


def prompt_wrap(tokenizer, bos: bool, chat: bool) -> Wrap:
    """BOS and chat-template wrapping with never a double BOS.

    A template that writes BOS itself keeps it (the id is then not prepended); with --no-bos that BOS is
    dropped from the template text too, so --no-bos always means no BOS in the prompt.
    """
    head = tuple(bos_ids(tokenizer, bos))
    if not chat:
        return Wrap(head)
    pre, post = chat_wrapper(tokenizer)
    bos_text = tokenizer.bos_token or ""
    if bos_text and pre.startswith(bos_text):
        head = ()
        if not bos:
            pre = pre[len(bos_text):]
    return Wrap(head, pre, post, True)


def answer_tokens(tokenizer, prompt_text: str, prompt_ids: list[int], answer: str) -> tuple[list[int], bool]:
    """Tokens of the continuation " A" in context: tokenize(prompt + " " + A) minus the prompt's tokens.

    When the tokenizer merges across the prompt's end (the prompt's own tokens change), fall back to the
    tokens of " A" after the prompt's last word alone, then to " A" alone (in_context False)."""
    full = encode(tokenizer, prompt_text + " " + answer)
    if full[:len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids):], True
    word = prompt_text.rsplit(None, 1)[-1] if prompt_text.strip() else ""
    head, both = encode(tokenizer, word), encode(tokenizer, word + " " + answer)
    if word and both[:len(head)] == head and len(both) > len(head):
        return both[len(head):], False
    return encode(tokenizer, " " + answer), False


def stop_ids(tokenizer, engine) -> list[int]:
    """Ids that end a generation: the tokenizer's EOS and the model's generation-config EOS ids (chat models
    often end a turn with an id that is not the tokenizer's EOS)."""
    ids: list[int] = []
    config = getattr(getattr(engine, "model", None), "generation_config", None)
    for value in (getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return ids
