"""The offline synthetic QA: facts hidden in real long text from --corpus, asked about after it.

The haystack is the corpus stream (documents concatenated with blank lines; question i reads it from
token i x max(lengths), wrapping around when the corpus is short). A question is a chain of `hops` facts
(1: "The access code of the X is N."; 2: X kept in vault V, V opens with N; 3: X belongs to P, P keeps
everything in V, V opens with N) plus `--qa-distractors` facts from other chains of the same shape, all
seeded by (seed, sample). The first fact of the chain sits at the cell's depth (a seeded fraction when no
depth is given), the others at seeded fractions; facts go after a line break when one is within 48 tokens.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.core.errors import InputError
from tasks.base import Cell, TaskParams
from tasks.generation import answer_tokens, encode, int_option
from tasks.longqa.source import QAPrompt, Source, check_fit, split_names

_ADJECTIVES = ("amber", "silver", "crimson", "velvet", "granite", "copper", "ivory", "cobalt", "jade",
               "scarlet", "golden", "violet", "marble", "bronze", "azure", "ashen", "coral", "olive", "onyx",
               "pearl")
_NOUNS = ("compass", "lantern", "teapot", "violin", "telescope", "hourglass", "chessboard", "typewriter",
          "kettle", "globe", "saddle", "anchor", "harp", "mirror", "locket", "clock", "quill", "drum", "fan",
          "vase")
_VAULTS = ("Alder", "Birch", "Cedar", "Dover", "Elm", "Falcon", "Granite", "Harbor", "Iris", "Juniper",
           "Kestrel", "Linden", "Maple", "Nettle", "Orchid", "Pine", "Quarry", "Raven", "Sable", "Thistle",
           "Umber", "Willow")
_PEOPLE = ("Alice Brandt", "Boris Chen", "Clara Diaz", "Daniel Eze", "Elena Fischer", "Farid Gupta",
           "Greta Holm", "Hiro Ito", "Ines Jansen", "Jonas Kova", "Kira Lund", "Luca Moreau", "Mira Novak",
           "Nils Ortiz", "Olga Petrov", "Pavel Quinn", "Rosa Silva", "Sven Tanaka", "Tara Ueda", "Umar Vance")
MAX_HOPS = 3
MAX_DISTRACTORS = len(_PEOPLE) - 1  # every distractor chain needs its own entities

SYNTH_HEAD = ("The text below hides a few short facts among unrelated material. "
              "Read it, then answer the question "
              "after it.\n\n")
SYNTH_MAX_NEW_TOKENS = 16
SNAP_WINDOW = 48  # tokens searched on each side of a fact's position for a line break


@dataclass(frozen=True)
class SyntheticQuestion:
    hops: int
    facts: tuple[str, ...]  # the chain, in hop order
    distractors: tuple[str, ...]
    question: str
    lead: str  # the answer's lead-in; the continuation is " " + answer
    answer: str
    fractions: tuple[float, ...]  # seeded positions (0..1) of chain facts then distractors


def _chain(hops: int, item: str, vault: str, person: str, code: str) -> tuple[list[str], str, str]:
    if hops == 1:
        return ([f"The access code of the {item} is {code}."], f"What is the access code of the {item}?",
                f"The access code of the {item} is")
    opens = f"The {vault} vault opens with the code {code}."
    if hops == 2:
        return ([f"The {item} is kept in the {vault} vault.", opens],
                f"What code opens the vault where the {item} is kept?",
                f"The vault where the {item} is kept opens with the code")
    return ([f"The {item} belongs to {person}.", f"{person} keeps everything in the {vault} vault.", opens],
            f"What code opens the vault where the owner of the {item} keeps everything?",
            f"The vault where the owner of the {item} keeps everything opens with the code")


def synthetic_question(seed: int, sample: int, hops: int, distractors: int) -> SyntheticQuestion:
    """Question `sample` of a seeded run: its fact chain, distractor facts and their positions."""
    rng = random.Random(f"longqa:{seed}:{sample}")
    chains = 1 + math.ceil(distractors / hops)
    items = rng.sample([f"{a} {n}" for a in _ADJECTIVES for n in _NOUNS], chains)
    vaults = rng.sample(_VAULTS, chains)
    people = rng.sample(_PEOPLE, chains)
    codes = [str(c) for c in rng.sample(range(100000, 1000000), chains)]
    facts, question, lead = _chain(hops, items[0], vaults[0], people[0], codes[0])
    others = [_chain(hops, items[k], vaults[k], people[k], codes[k])[0] for k in range(1, chains)]
    pool = [f for hop in range(hops) for chain in others for f in chain[hop:hop + 1]]  # spread over hop kinds
    picked = pool[:distractors]
    fractions = tuple(rng.random() for _ in range(len(facts) + len(picked)))
    return SyntheticQuestion(hops, tuple(facts), tuple(picked), question, lead, codes[0], fractions)


def _hops(value: Any) -> list[int]:
    names = ([str(value)] if isinstance(value, int)
             else split_names(value) if value is not None else ["1", "2"])
    try:
        hops = [int(h) for h in names]
    except ValueError:
        hops = []
    if not hops or any(not 1 <= h <= MAX_HOPS for h in hops):
        raise InputError(f"--qa-hops {value!r}: pass hop counts between 1 and {MAX_HOPS}, e.g. --qa-hops 1,2")
    return hops


class SyntheticSource(Source):
    """Questions cycle through `--qa-hops`; every cell of a question reads the same stretch of the stream."""

    foreign = ("qa_datasets", "qa_pad")
    refusal = ("{flag} applies to LongBench data but no --source is given: "
               "pass --source FILE.jsonl, a folder "
               "or a hub id (hf:ID), or drop {flag} for the synthetic QA")

    def __init__(self, options: dict[str, Any], cache: dict[Any, Any]) -> None:
        super().__init__(options, cache)
        self.hops = _hops(options.get("qa_hops"))
        self.distractors = int_option(options, "qa_distractors", "--qa-distractors", 3, 0)
        if self.distractors > MAX_DISTRACTORS:
            raise InputError(f"--qa-distractors {self.distractors} is more than {MAX_DISTRACTORS}: "
                             f"pass at most {MAX_DISTRACTORS}")
        self.stream: Any = None  # numpy int64 token stream, once prepared
        self.window = 0
        self.questions: dict[int, SyntheticQuestion] = {}

    def identity(self) -> dict[str, Any]:
        # qa_datasets is a key of every longqa identity (None here): recorded synthetic cell keys hash it
        return {"source": "synthetic", "qa_datasets": None, **super().identity(),
                "qa_hops": ",".join(map(str, self.hops)), "qa_distractors": self.distractors}

    def samples(self, params: TaskParams, warn: Callable[[str], None] | None = None) -> list[int]:
        return list(range(params.samples))

    def load(self, shortest: int, warn: Callable[[str], None]) -> None:
        import numpy as np

        from harness.data.corpus import token_stream

        params, tok = self.params, self.tokenizer
        self.window = max(params.lengths)
        need = self.window * params.samples
        sep = encode(tok, "\n\n")
        stream = token_stream(params.corpus, lambda text: encode(tok, text), sep, need)
        total = len(stream)
        if not total:
            raise InputError(f"corpus {params.corpus!r} has no text: pass another --corpus")
        if total < need:
            warn(f"longqa: corpus {params.corpus!r} has {total} tokens, fewer than {need} "
                 f"(samples x longest length): question haystacks wrap around and overlap")
        self.stream = np.asarray(stream, dtype=np.int64)
        for s in range(params.samples):
            q = synthetic_question(params.seed, s, self.hops[s % len(self.hops)], self.distractors)
            self.questions[s] = q
            check_fit(len(self._parts(q)[0]), shortest, f"synthetic question {s} ({q.hops} hop(s), "
                                                        f"{len(q.distractors)} distractors)")

    def _parts(self, q: SyntheticQuestion) -> tuple[list[int], list[int], list[list[int]], str]:
        """(all fixed tokens, head, fact pieces (chain then distractors), tail text) of a question."""
        tok, wrap = self.tokenizer, self.wrap
        head = self.head_ids(SYNTH_HEAD)
        tail_text = f"\n\nQuestion: {q.question}" + (wrap.post if wrap.chat else "\n") + f"Answer: {q.lead}"
        pieces = [encode(tok, f"\n{fact}\n") for fact in (*q.facts, *q.distractors)]
        fixed = head + [t for p in pieces for t in p] + encode(tok, tail_text)
        return fixed, head, pieces, tail_text

    def build(self, cell: Cell) -> QAPrompt:
        import numpy as np

        tok = self.tokenizer
        q = self.questions[cell.sample]
        fixed, head, pieces, tail_text = self._parts(q)
        tail = encode(tok, tail_text)
        budget = cell.length - len(fixed)
        check_fit(len(fixed), cell.length, f"synthetic question {cell.sample}")
        stream, window = self.stream, self.window
        hay = stream.take(
            np.arange(cell.sample * window, cell.sample * window + budget) % len(stream)).tolist()
        fractions = list(q.fractions)
        if cell.depth is not None:
            fractions[0] = cell.depth
        decoded: dict[int, str] = {}

        def boundary(pos: int) -> bool:
            if pos in (0, budget):
                return True
            token = hay[pos - 1]
            if token not in decoded:
                decoded[token] = tok.decode([token])
            return "\n" in decoded[token]

        def snap(pos: int) -> int:
            for delta in range(SNAP_WINDOW + 1):
                for p in (pos - delta, pos + delta):
                    if 0 <= p <= budget and boundary(p):
                        return p
            return pos

        places = sorted((snap(round(f * budget)), k) for k, f in enumerate(fractions))
        ids, prev, fact_position = list(head), 0, None
        for pos, k in places:
            ids += hay[prev:pos]
            if k == 0:
                fact_position = len(ids)
            ids += pieces[k]
            prev = pos
        ids += hay[prev:] + tail
        assert len(ids) == cell.length, (len(ids), cell.length)
        answer_ids, _ = answer_tokens(tok, tail_text, tail, q.answer)
        record = {"source": "synthetic", "dataset": f"synthetic_{q.hops}hop",
                  "qa_id": f"seed{self.params.seed}:q{cell.sample}", "hops": q.hops,
                  "distractors": len(q.distractors),
                  "answer": q.answer, "prompt_tokens": len(ids), "context_tokens": budget,
                  "truncated_tokens": 0,
                  "pad_tokens": 0, "answer_in_context": True, "answer_in_full_context": True,
                  "fact_position": fact_position}
        return QAPrompt(ids, self.max_new_tokens or SYNTH_MAX_NEW_TOKENS, [], (q.answer,), "match",
                      answer_ids=answer_ids, record=record)
