"""RULER's needle-in-a-haystack family (scripts/data/synthetic/niah.py): eight configs, one generator.

Needle "One of the special magic {values} for {key} is: {value}." (the value kind in the plural, as RULER
writes it), hidden in a noise haystack (lines), a natural-language text (sentences) or a haystack made of
other needles (lines). num_needle_k keys (at least num_needle_q), num_needle_v values each; the question
asks for num_needle_q keys and every value of them is a reference (string_match_all). With one answer
RULER's template turns singular ("A special magic number is hidden ..."), and its answer is one fixed
string: " {value}" is teacher-forced after the answer prefix.

Positions: each needle at a depth drawn without replacement from RULER's 40 depths (0..100%); with
--depths the first needle of the first queried key goes at the cell's depth instead. Keys, values and
depths come from (seed, sample): every length and depth of a sample hides the same needles.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from tasks.base import Cell, Preflight, TaskParams
from tasks.generation import DEPTHS, Wrap, parse_depths
from tasks.ruler.haystack import Stream, build_stream, noise_stream, text_stream
from tasks.ruler.layout import Frame, Insert, RulerPrompt, assemble, continuation_ids
from tasks.ruler.options import (
    HAYSTACK,
    NUM_NEEDLE_K,
    NUM_NEEDLE_Q,
    NUM_NEEDLE_V,
    TYPE_NEEDLE_K,
    TYPE_NEEDLE_V,
    choice,
    number,
)
from tasks.ruler.task import Family
from tasks.ruler.words import KINDS, distinct_values, random_value, value_logprob_chance

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
HEAD = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type_needle_v} afterwards.\n")
QUESTION = "\nWhat are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
MAX_NEW_TOKENS = 128
RULER_DEPTHS = tuple(round(100 * i / 39) for i in range(40))  # np.linspace(0, 100, 40), rounded


@dataclass(frozen=True)
class NiahConfig:
    haystack: str
    type_needle_k: str
    type_needle_v: str
    num_needle_k: int
    num_needle_v: int
    num_needle_q: int
    max_new_tokens: int
    chat_template: bool
    depths: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Needles:
    texts: tuple[str, ...]
    fractions: tuple[float, ...]
    answers: tuple[str, ...]
    query: str
    first: int  # the needle that --depths places: the first value of the first queried key
    keys: frozenset[str]


def singular(text: str) -> str:
    """RULER's template edits for a single answer (applied to the template and the answer prefix)."""
    text = text.replace("Some", "A").replace("are all", "is")
    return text.replace("are", "is").replace("answers", "answer")


def draw(seed: int, sample: int, c: NiahConfig) -> Needles:
    rng = random.Random(f"ruler-niah|{seed}|{sample}")
    keys = distinct_values(rng, c.type_needle_k, c.num_needle_k)
    values = [distinct_values(rng, c.type_needle_v, c.num_needle_v, set(keys)) for _ in keys]
    flat = [(k, v) for k, vs in enumerate(values) for v in vs]
    texts = tuple(NEEDLE.format(type_needle_v=c.type_needle_v, key=keys[k], value=v) for k, v in flat)
    if len(flat) <= len(RULER_DEPTHS):
        fractions = tuple(d / 100 for d in rng.sample(RULER_DEPTHS, len(flat)))
    else:
        fractions = tuple(rng.random() for _ in flat)
    asked = rng.sample(range(len(keys)), c.num_needle_q)
    answers = tuple(v for k in asked for v in values[k])
    names = [keys[k] for k in asked]
    query = ", ".join(names[:-1]) + ", and " + names[-1] if len(names) > 1 else names[0]
    first = next(i for i, (k, _) in enumerate(flat) if k == asked[0])
    used = frozenset(keys) | {v for vs in values for v in vs}
    return Needles(texts, fractions, answers, query, first, used)


def needle_stream(tokenizer, seed: int, sample: int, c: NiahConfig, avoid: frozenset[str],
                  need: int) -> Stream:
    """A haystack of distractor needles (other keys, other values), one per line, seeded per sample."""
    rng = random.Random(f"ruler-niah-haystack|{seed}|{sample}")
    lines: list[str] = []

    def units(n: int) -> list[str]:
        while len(lines) < n:
            key, value = random_value(rng, c.type_needle_k), random_value(rng, c.type_needle_v)
            if key not in avoid and value not in avoid:
                lines.append(NEEDLE.format(type_needle_v=c.type_needle_v, key=key, value=value))
        return lines[:n]

    return build_stream(tokenizer, units, "\n", need, "needle")


class NiahFamily(Family):
    kind = "niah"
    depth = True

    def __init__(self, haystack: str, type_needle_k: str, type_needle_v: str, num_needle_k: int = 1,
                 num_needle_v: int = 1, num_needle_q: int = 1) -> None:
        self.defaults = NiahConfig(haystack, type_needle_k, type_needle_v, num_needle_k, num_needle_v,
                                   num_needle_q, MAX_NEW_TOKENS, False)
        self.fixed_answer = num_needle_v * num_needle_q == 1
        self.options = (DEPTHS, HAYSTACK, TYPE_NEEDLE_K, TYPE_NEEDLE_V, NUM_NEEDLE_K, NUM_NEEDLE_V,
                        NUM_NEEDLE_Q)

    def resolve(self, params: TaskParams) -> NiahConfig:
        o, d = params.options or {}, self.defaults
        q = number(o, "num_needle_q", d.num_needle_q, 1, 64)
        return NiahConfig(
            haystack=str(o.get("haystack") or d.haystack),
            type_needle_k=choice(o, "type_needle_k", d.type_needle_k, KINDS),
            type_needle_v=choice(o, "type_needle_v", d.type_needle_v, KINDS),
            num_needle_k=max(number(o, "num_needle_k", d.num_needle_k, 1, 1024), q),  # RULER: max(k, q)
            num_needle_v=number(o, "num_needle_v", d.num_needle_v, 1, 64), num_needle_q=q,
            max_new_tokens=number(o, "max_new_tokens", MAX_NEW_TOKENS, 1, 4096),
            chat_template=bool(o.get("chat_template")),
            depths=tuple(parse_depths(o.get("depths")) or ()) or None)

    def prepare(self, pre: Preflight, config: NiahConfig, wrap: Wrap) -> dict[str, Any]:
        params, need = pre.params, max(pre.params.lengths)
        needles = {s: draw(params.seed, s, config) for s in range(params.samples)}
        if config.haystack == "noise":
            streams = dict.fromkeys(needles, noise_stream(pre.tokenizer, need))
        elif config.haystack == "needle":
            streams = {s: needle_stream(pre.tokenizer, params.seed, s, config, n.keys, need)
                       for s, n in needles.items()}
        else:
            streams = dict.fromkeys(needles, text_stream(pre.tokenizer, config.haystack, need))
        return {"needles": needles, "streams": streams}

    def build(self, tokenizer, wrap: Wrap, params: TaskParams, config: NiahConfig, shared: dict[str, Any],
              cell: Cell) -> RulerPrompt:
        needles: Needles = shared["needles"][cell.sample]
        stream: Stream = shared["streams"][cell.sample]
        fractions = list(needles.fractions)
        if cell.depth is not None:
            fractions[needles.first] = cell.depth
        one = len(needles.answers) == 1
        kind = config.type_needle_v[:-1] if one else config.type_needle_v
        edit = singular if one else (lambda text: text)
        frame = Frame(edit(HEAD).format(type_needle_v=kind),
                      edit(QUESTION).format(type_needle_v=kind, query=needles.query),
                      edit(ANSWER_PREFIX).format(type_needle_v=kind, query=needles.query))
        inserts = [Insert(t, f) for t, f in zip(needles.texts, fractions, strict=True)]
        built = assemble(tokenizer, cell.length, frame, wrap, stream, inserts,
                         f"RULER {config.haystack} niah")
        prompt = RulerPrompt(built.ids, needles.answers, "all", config.max_new_tokens)
        if one:
            prompt.continuation = " " + needles.answers[0]
            prompt.answer_ids = continuation_ids(tokenizer, built.tail_text, built.tail_ids,
                                                 prompt.continuation)
            prompt.chance_logprob = value_logprob_chance(config.type_needle_v)
        prompt.record = {"needles": len(inserts), "needle_depth": built.depths[needles.first],
                         "needle_position": built.positions[needles.first],
                         "haystack_tokens": built.haystack_tokens, "haystack": stream.name}
        return prompt
