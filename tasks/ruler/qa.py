"""RULER's QA family (scripts/data/synthetic/qa.py): `qa_1` (SQuAD) and `qa_2` (HotpotQA).

A question over documents "Document {i}:\n{text}" (joined by blank lines): the documents that answer it
and, to fill the length, distractor documents (SQuAD: the same article's other paragraphs first, as in
RULER; then others in seeded order). Scored with any-reference match (string_match_part).

Data: `--qa-file` a local JSON file in RULER's formats (SQuAD: {"data": [{"paragraphs": [{"context",
"qas": [{"question", "answers": [{"text"}], "is_impossible"}]}]}]}; HotpotQA: [{"question", "answer",
"context": [[title, [sentences]]]}]); question i is sample i. Without one, an offline synthetic QA: the
fact chain of tasks/longqa/synthetic.py (qa_1: one fact; qa_2: two facts in two documents, multi-hop as
HotpotQA) plus 3 distractor facts of the same shape, each appended to a passage of the shipped novel;
the other passages are the distractor documents. Its answer is one fixed string (a 6-digit code).

Depth: with --depths the (first) answering document starts near that fraction of the documents that
fit; otherwise its place is seeded. The last document is cut to make exactly L tokens; answering
documents always fit whole.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import InputError
from tasks.base import Cell, Preflight, TaskParams
from tasks.generation import DEPTHS, Wrap, encode, parse_depths
from tasks.longqa.synthetic import synthetic_question
from tasks.passkey.haystack import encode_offsets
from tasks.ruler.haystack import Stream, sentences
from tasks.ruler.layout import Frame, RulerPrompt, assemble, continuation_ids, fixed_parts
from tasks.ruler.options import QA_FILE, number
from tasks.ruler.task import Family

INSTRUCTION = ("Answer the question based on the given documents. Only give me the answer and do not output "
               "any other words.")
HEAD = f"{INSTRUCTION}\n\nThe following are given documents.\n\n"
QUESTION = f"\n\n{INSTRUCTION}\n\nQuestion: {{query}}"
ANSWER_PREFIX = " Answer:"
DOCUMENT = "Document {i}:\n{document}"
SYNTH_DISTRACTORS = 3
PASSAGE_WORDS = 50  # synthetic documents: the novel's sentences grouped to at least this many words


@dataclass(frozen=True)
class Question:
    query: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]  # documents that answer it
    more: tuple[int, ...] = ()  # preferred distractors (SQuAD: the same article's paragraphs)
    extra: tuple[int, ...] = ()  # documents placed like gold ones (synthetic distractor facts)


@dataclass(frozen=True)
class QAConfig:
    qa_file: str | None
    max_new_tokens: int
    chat_template: bool
    depths: tuple[float, ...] | None = None


def read_squad(data: Any) -> tuple[list[Question], list[str]]:
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    questions = []
    for d in data["data"]:
        article = [index[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            own = index[p["context"]]
            for qa in p["qas"]:
                if not qa.get("is_impossible", False) and qa["answers"]:
                    questions.append(Question(qa["question"], tuple(a["text"] for a in qa["answers"]), (own,),
                                              tuple(i for i in article if i != own)))
    return questions, docs


def read_hotpotqa(data: Any) -> tuple[list[Question], list[str]]:
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    return [Question(d["question"], (d["answer"],),
                     tuple(index[f"{t}\n{''.join(p)}"] for t, p in d["context"])) for d in data], docs


def read_file(path: str, dataset: str) -> tuple[list[Question], list[str]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        questions, docs = (read_squad if dataset == "squad" else read_hotpotqa)(data)
    except OSError as err:
        raise InputError(f"--qa-file {path!r} cannot be read ({err.strerror}): "
                         f"pass a {dataset} JSON file") from None
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise InputError(f"--qa-file {path!r} is not {dataset} JSON in RULER's format ({type(err).__name__}: "
                         f"{err}): see tasks/ruler/qa.py") from None
    if not questions:
        raise InputError(f"--qa-file {path!r} has no answerable question: pass a {dataset} JSON file")
    return questions, docs


def passages() -> list[str]:
    """The novel's sentences grouped into passages of at least PASSAGE_WORDS words (in order)."""
    out, current, words = [], [], 0
    for sentence in sentences("essay"):
        current.append(sentence)
        words += len(sentence.split())
        if words >= PASSAGE_WORDS:
            out.append(" ".join(current))
            current, words = [], 0
    return out


def synthetic(seed: int, samples: int, hops: int) -> tuple[list[Question], list[str]]:
    """Questions whose fact documents are novel passages with a fact appended (passages used once)."""
    docs = passages()
    base = len(docs)
    questions = []
    rng = random.Random(f"ruler-qa-synthetic|{seed}")
    free = list(range(base))
    rng.shuffle(free)
    for s in range(samples):
        q = synthetic_question(seed, s, hops, SYNTH_DISTRACTORS)
        ids = []
        for fact in (*q.facts, *q.distractors):
            docs.append(docs[free.pop() if free else rng.randrange(base)] + " " + fact)
            ids.append(len(docs) - 1)
        questions.append(Question(q.question, (q.answer,), tuple(ids[:hops]), (), tuple(ids[hops:])))
    return questions, docs


class QAFamily(Family):
    kind = "qa"
    depth = True
    options = (DEPTHS, QA_FILE)

    def __init__(self, dataset: str, hops: int) -> None:
        self.dataset, self.hops = dataset, hops
        self.fixed_answer = True  # the synthetic QA's; a file's question with one distinct answer too

    def resolve(self, params: TaskParams) -> QAConfig:
        o = params.options or {}
        return QAConfig(o.get("qa_file") or None, number(o, "max_new_tokens", 32, 1, 4096),
                        bool(o.get("chat_template")), tuple(parse_depths(o.get("depths")) or ()) or None)

    def prepare(self, pre: Preflight, config: QAConfig, wrap: Wrap) -> dict[str, Any]:
        if config.qa_file:
            questions, docs = read_file(config.qa_file, self.dataset)
        else:
            questions, docs = synthetic(pre.params.seed, pre.params.samples, self.hops)
        if len(questions) < pre.params.samples:
            pre.warn(f"--qa-file {config.qa_file!r} has {len(questions)} questions (asked "
                     f"{pre.params.samples} samples): running those")
        return {"questions": questions, "docs": docs, "sizes": {}}

    def available(self, shared: dict[str, Any]) -> int:
        return len(shared["questions"])

    def build(self, tokenizer, wrap: Wrap, params: TaskParams, config: QAConfig, shared: dict[str, Any],
              cell: Cell) -> RulerPrompt:
        q: Question = shared["questions"][cell.sample]
        frame = Frame(HEAD, QUESTION.format(query=q.query), ANSWER_PREFIX)
        head_ids, _, _, tail_ids = fixed_parts(tokenizer, frame, wrap, Stream((), (0,), "documents"), [])
        hay = cell.length - len(head_ids) - len(tail_ids)
        order = self.distractors(shared, q, params.seed, cell.sample)
        for attempt in range(6):
            text, starts, ends, count = self.layout(tokenizer, shared, q, order, hay, cell, attempt)
            ids, spans = encode_offsets(tokenizer, text)
            cut = spans[hay - 1][1] if 0 < hay <= len(spans) else 0
            if len(ids) >= hay and all(end <= cut for end in ends):
                break
        else:
            raise InputError(f"--lengths {cell.length} is too short for RULER {self.dataset} QA question "
                             f"{cell.sample}: its answering documents do not fit: use longer --lengths")
        built = assemble(tokenizer, cell.length, frame, wrap, Stream(tuple(ids), (0,), "documents"), [],
                         f"RULER qa ({self.dataset})")
        gold_token = next((i for i, (a, _) in enumerate(spans) if a >= starts[0]), 0)
        prompt = RulerPrompt(built.ids, q.answers, "part", config.max_new_tokens)
        if len(set(q.answers)) == 1:
            prompt.continuation = " " + q.answers[0]
            prompt.answer_ids = continuation_ids(tokenizer, built.tail_text, built.tail_ids,
                                                 prompt.continuation)
            if not config.qa_file:
                prompt.chance_logprob = -len(q.answers[0]) * math.log(10.0)
        prompt.record = {"source": config.qa_file or "synthetic", "dataset": self.dataset,
                         "documents": count, "gold_depth": gold_token / hay if hay else 0.0,
                         "haystack_tokens": built.haystack_tokens}
        return prompt

    @staticmethod
    def distractors(shared: dict[str, Any], q: Question, seed: int, sample: int) -> list[int]:
        taken = set(q.gold) | set(q.extra)
        rest = [i for i in range(len(shared["docs"])) if i not in taken and i not in q.more]
        random.Random(f"ruler-qa|{seed}|{sample}").shuffle(rest)
        return [i for i in q.more if i not in taken] + rest

    @staticmethod
    def size(tokenizer, shared: dict[str, Any], doc: int) -> int:
        sizes = shared["sizes"]
        if doc not in sizes:
            sizes[doc] = len(encode(tokenizer, DOCUMENT.format(i=99, document=shared["docs"][doc]) + "\n\n"))
        return sizes[doc]

    def layout(self, tokenizer, shared: dict[str, Any], q: Question, order: list[int], hay: int, cell: Cell,
               attempt: int) -> tuple[str, list[int], list[int], int]:
        """(context text, char start and end of each answering document, documents that fit whole)."""
        special = [*q.gold, *q.extra]
        used = sum(self.size(tokenizer, shared, d) for d in special)
        fit, total, picked = 0, used, []
        for d in order:
            picked.append(d)
            total += self.size(tokenizer, shared, d)
            if total <= hay:
                fit += 1
            if total >= hay + 64:
                break
        if total < hay:
            raise InputError(f"the {self.dataset} documents have ~{total} tokens, fewer than the {hay} "
                             "length "
                             f"{cell.length} needs: use shorter --lengths or a larger --qa-file")
        slots = max(0, fit - attempt) + len(special)  # documents that fit whole, special ones included
        rng = random.Random(f"ruler-qa-place|{cell.sample}|{cell.length}")
        places = rng.sample(range(slots), len(special))
        if cell.depth is not None:
            first = round(cell.depth * (slots - 1))
            places = [first] + [p if p != first else places[0] for p in places[1:]]
        docs = list(picked)
        for place, d in sorted(zip(places, special, strict=True)):
            docs.insert(place, d)
        texts = [DOCUMENT.format(i=i + 1, document=shared["docs"][d]) for i, d in enumerate(docs)]
        starts, pos = [], 0
        for t in texts:
            starts.append(pos)
            pos += len(t) + 2
        where = {d: docs.index(d) for d in special}
        gold_starts = [starts[where[d]] for d in q.gold]
        ends = [starts[where[d]] + len(texts[where[d]]) for d in special]
        return "\n\n".join(texts), gold_starts, ends, slots
