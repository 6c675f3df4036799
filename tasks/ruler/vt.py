"""RULER's variable tracking (scripts/data/synthetic/variable_tracking.py): config `vt`.

Chains "VAR AAAAA = 12345", "VAR BBBBB = VAR AAAAA ", ... (num_hops hops, 5-letter names, a 5-digit value;
RULER's trailing space kept) hidden in order among noise lines; the question asks for every variable
assigned the first chain's value: its num_hops + 1 names are the references (string_match_all), and in
chain order, space-separated, they are the one fixed answer string teacher-forced after the answer prefix
(the form RULER's worked example shows).

Worked example (RULER always adds one): a complete small task with 3-letter names, its answer appended,
before the real one; its noise lines are as many as keep it within 500 tokens (at least 5), as in RULER.
By default it is kept where it takes at most a quarter of the prompt (always at RULER's lengths, 4K and
up), and left out below; `--num-fewshot 1` always adds it, 0 never (the record's `fewshot`). Chain
positions: seeded fractions, sorted within a chain; everything comes from (seed, sample), the same at
every length.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from tasks.base import Cell, Preflight, TaskParams
from tasks.generation import Wrap, encode
from tasks.ruler.haystack import NOISE, noise_stream, text_stream
from tasks.ruler.layout import Frame, Insert, RulerPrompt, assemble, continuation_ids
from tasks.ruler.options import HAYSTACK, NUM_CHAINS, NUM_FEWSHOT, NUM_HOPS, keep_examples, number
from tasks.ruler.task import Family
from tasks.ruler.words import variable_names

HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
QUESTION = "\nQuestion: Find all variables that are assigned the value {query} in the text above."
ANSWER_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
                 "variables are assigned the value {query}, they are: ")
MAX_NEW_TOKENS = 30
EXAMPLE_TOKENS = 500  # RULER sizes its worked example to at most this many tokens
EXAMPLE_MIN_NOISE = 5


@dataclass(frozen=True)
class VTConfig:
    haystack: str
    num_chains: int
    num_hops: int
    num_fewshot: int | None  # None: RULER's example where it takes at most a quarter of the prompt
    max_new_tokens: int
    chat_template: bool


@dataclass(frozen=True)
class Chains:
    statements: tuple[tuple[str, ...], ...]  # per chain, in order
    names: tuple[str, ...]  # the first chain's variables, in order
    value: str


def chains(rng: random.Random, num_chains: int, hops: int, letters: int) -> Chains:
    names = variable_names(rng, num_chains * (hops + 1), letters)
    values = rng.sample(range(10000, 99999), num_chains)
    out = []
    for c in range(num_chains):
        own = names[c * (hops + 1):(c + 1) * (hops + 1)]
        out.append((f"VAR {own[0]} = {values[c]}",
                    *(f"VAR {own[j + 1]} = VAR {own[j]} " for j in range(hops))))
    return Chains(tuple(out), tuple(names[:hops + 1]), str(values[0]))


def positions(rng: random.Random, found: Chains) -> list[float]:
    """Seeded fractions, sorted within each chain (a chain reads in order)."""
    return [f for chain in found.statements for f in sorted(rng.random() for _ in chain)]


def frame(found: Chains, hops: int, head: str = HEAD) -> Frame:
    return Frame(head, QUESTION.format(query=found.value),
                 ANSWER_PREFIX.format(num_v=hops + 1, query=found.value))


def example(tokenizer, rng: random.Random, c: VTConfig) -> str:
    """RULER's worked example: a small noise task, its answer appended, then a line break."""
    found = chains(rng, c.num_chains, min(10, c.num_hops), 3)
    fractions = positions(rng, found)
    statements = [s for chain in found.statements for s in chain]

    def text(noise: int) -> str:
        lines: list[Any] = [(i / noise, 1, NOISE) for i in range(noise)]
        lines += [(f, 0, s) for f, s in zip(fractions, statements, strict=True)]
        context = "\n".join(line for *_, line in sorted(lines, key=lambda x: (x[0], x[1])))
        f = frame(found, min(10, c.num_hops))
        return f"{f.head}{context}{f.question}{f.answer_prefix} {' '.join(found.names)}\n"

    noise = EXAMPLE_MIN_NOISE
    while len(encode(tokenizer, text(noise + 1))) <= EXAMPLE_TOKENS:
        noise += 1
    return text(noise)


class VTFamily(Family):
    kind = "variable_tracking"
    fixed_answer = True
    options = (HAYSTACK, NUM_CHAINS, NUM_HOPS, NUM_FEWSHOT)

    def resolve(self, params: TaskParams) -> VTConfig:
        o = params.options or {}
        return VTConfig(haystack=str(o.get("haystack") or "noise"),
                        num_chains=number(o, "num_chains", 1, 1, 64),
                        num_hops=number(o, "num_hops", 4, 1, 64),
                        num_fewshot=number(o, "num_fewshot", None, 0, 1),
                        max_new_tokens=number(o, "max_new_tokens", MAX_NEW_TOKENS, 1, 4096),
                        chat_template=bool(o.get("chat_template")))

    def prepare(self, pre: Preflight, config: VTConfig, wrap: Wrap) -> dict[str, Any]:
        need = max(pre.params.lengths)
        if config.haystack == "noise":
            stream = noise_stream(pre.tokenizer, need)
        else:
            stream = text_stream(pre.tokenizer, config.haystack, need)
        return {"stream": stream, "cache": {}}

    def build(self, tokenizer, wrap: Wrap, params: TaskParams, config: VTConfig, shared: dict[str, Any],
              cell: Cell) -> RulerPrompt:
        cache = shared["cache"]
        if cell.sample not in cache:
            rng = random.Random(f"ruler-vt|{params.seed}|{cell.sample}")
            found = chains(rng, config.num_chains, config.num_hops, 5)
            fractions = positions(rng, found)
            shot = example(tokenizer, rng, config) + "\n" if config.num_fewshot != 0 else ""
            cache[cell.sample] = (found, fractions, shot, len(encode(tokenizer, shot)))
        found, fractions, shot, shot_tokens = cache[cell.sample]
        if not keep_examples(shot_tokens, cell.length, config.num_fewshot):
            shot = ""
        stream = shared["stream"]
        statements = [s if stream.sep == "\n" else s.strip() + "."  # sentences in a text haystack
                      for chain in found.statements for s in chain]
        inserts = [Insert(s, f) for s, f in zip(statements, fractions, strict=True)]
        hint = f", or --num-fewshot 0 (its worked example takes {shot_tokens} tokens)"
        built = assemble(tokenizer, cell.length, frame(found, config.num_hops, shot + HEAD), wrap, stream,
                         inserts, "RULER vt", hint if shot else "")
        prompt = RulerPrompt(built.ids, found.names, "all", config.max_new_tokens,
                             chance_logprob=-len(found.names) * 5 * math.log(26.0))
        prompt.continuation = " ".join(found.names)
        prompt.answer_ids = continuation_ids(tokenizer, built.tail_text, built.tail_ids, prompt.continuation)
        prompt.record = {"chains": config.num_chains, "hops": config.num_hops, "fewshot": int(bool(shot)),
                         "first_statement_depth": min(built.depths[:config.num_hops + 1]),
                         "last_statement_depth": max(built.depths[:config.num_hops + 1]),
                         "haystack_tokens": built.haystack_tokens, "haystack": stream.name}
        return prompt
