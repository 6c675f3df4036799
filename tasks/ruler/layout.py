"""A RULER prompt of exactly L tokens: head, a haystack prefix with units put in at boundaries, tail.

    [BOS] [chat prefix] head | haystack tokens with inserts (needles, chain statements) | question
    [chat suffix] answer prefix

The fixed parts (BOS, head, inserts, tail) are tokenised on their own; the haystack gets the rest,
H = L - fixed tokens, taken from the start of its stream (one tokenisation of the whole haystack text, so
its tokens are the ones the text has in context). An insert of fraction f goes in at the unit boundary
nearest to round(f x H) (a unit is a noise line, a sentence, a distractor needle, a list item), never
inside the haystack's last, cut unit. The ids are exactly L by construction; the model sees them as they
are (the text decoded from them may tokenise slightly differently at the seams).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.core.errors import InputError
from tasks.generation import Wrap, encode
from tasks.ruler.haystack import Stream


@dataclass(frozen=True)
class Insert:
    """A unit put into the haystack at a fraction of its tokens (`text` without separators)."""

    text: str
    fraction: float


@dataclass(frozen=True)
class Frame:
    """A family's text around the haystack: RULER's template split at {context}, and its answer prefix."""

    head: str
    question: str
    answer_prefix: str


@dataclass
class RulerPrompt:
    """One cell's prompt and how RULER scores it."""

    ids: list[int]
    answers: tuple[str, ...]
    scorer: str  # "all" (string_match_all) or "part" (string_match_part)
    max_new_tokens: int
    continuation: str | None = None  # the one fixed answer string, teacher-forced after the prompt
    answer_ids: list[int] | None = None
    chance_score: float = 0.0
    chance_logprob: float | None = None
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class Assembled:
    ids: list[int]
    tail_text: str
    tail_ids: list[int]
    positions: list[int]  # per insert (in the order given): index of its first token in ids
    depths: list[float]  # per insert: haystack tokens before it / H
    haystack_tokens: int
    fixed_tokens: int


def tail_text(frame: Frame, wrap: Wrap) -> str:
    """Question, then the answer prefix: in the assistant turn with a chat template, else right after."""
    if wrap.chat:
        return frame.question + wrap.post + frame.answer_prefix.lstrip()
    return frame.question + frame.answer_prefix


def fixed_parts(tokenizer, frame: Frame, wrap: Wrap, stream: Stream,
                inserts: list[Insert]) -> tuple[list[int], list[list[int]], str, list[int]]:
    """(head ids with BOS, each insert's ids, tail text, tail ids)."""
    head = list(wrap.bos) + encode(tokenizer, wrap.pre + frame.head)
    pieces = [encode(tokenizer, stream.insert_text(i.text)) for i in inserts]
    tail = tail_text(frame, wrap)
    return head, pieces, tail, encode(tokenizer, tail)


def assemble(tokenizer, length: int, frame: Frame, wrap: Wrap, stream: Stream, inserts: list[Insert],
             task: str, hint: str = "") -> Assembled:
    """The prompt of exactly `length` tokens (see the module docstring); InputError when the fixed parts
    or the haystack cannot make it."""
    head, pieces, tail_str, tail = fixed_parts(tokenizer, frame, wrap, stream, inserts)
    fixed = len(head) + sum(map(len, pieces)) + len(tail)
    hay = length - fixed
    if hay < 0:
        raise InputError(f"--lengths {length} is below {task}'s fixed parts (template, needles, question"
                         f"{', BOS' if wrap.bos else ''}): use --lengths of at least {fixed} tokens "
                         f"for this tokenizer{hint}")
    if len(stream.ids) < hay:
        raise InputError(f"the {stream.name} haystack has {len(stream.ids)} tokens, fewer than the {hay} "
                         f"{task} needs at length {length}: use shorter --lengths or a longer --haystack")
    # a cut last unit takes no insert: the limit is the last boundary at or before H
    places = [stream.boundary_near(round(i.fraction * hay), hay) for i in inserts]
    order = sorted(range(len(inserts)), key=lambda k: (places[k], k))
    ids, prev = list(head), 0
    positions = [0] * len(inserts)
    for k in order:
        ids += stream.ids[prev:places[k]]
        positions[k] = len(ids)
        ids += pieces[k]
        prev = places[k]
    ids += stream.ids[prev:hay]
    ids += tail
    assert len(ids) == length, (len(ids), length)
    depths = [p / hay if hay else 0.0 for p in places]
    return Assembled(ids, tail_str, tail, positions, depths, hay, fixed)


def continuation_ids(tokenizer, tail_text: str, tail_ids: list[int], continuation: str) -> list[int]:
    """Tokens of `continuation` right after the prompt: tokenize(tail + continuation) minus the tail's
    tokens when the tail keeps its own tokens, else the continuation alone."""
    full = encode(tokenizer, tail_text + continuation)
    if full[:len(tail_ids)] == tail_ids and len(full) > len(tail_ids):
        return full[len(tail_ids):]
    return encode(tokenizer, continuation)
