"""LongBench-format data (`--source FILE.jsonl | DIR | hf:ID`): rows, per-dataset prompts, the source.

Rows have `input`, `context`, `answers` (`dataset`, `_id` optional: the file name / line number stand in).
Per-dataset prompt templates, generation budgets and metrics follow LongBench (config/dataset2prompt.json,
dataset2maxlen.json, metrics.py); an unknown dataset gets a generic QA template (64 new tokens, token F1).
Context longer than the budget B: the middle is cut, the first ceil(B/2) and last floor(B/2) tokens are
kept (`truncated_tokens`). Context shorter than B (`--qa-pad`, default `others`): RULER-style distractor
padding with other rows' contexts of the same dataset (falling back to `--corpus` text when the dataset has
one row), the original context placed at the cell's depth (a seeded per-question depth when `--depths` is
not given, `context_depth` in the record); `--qa-pad none` keeps the prompt short and records its true
`prompt_tokens`. The sample index of a cell is the row's index among the selected datasets' rows (datasets
in `--qa-datasets` order, rows in file order); `--samples N` takes each dataset's first N rows, so indices
stay put when N changes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import InputError, one_line
from harness.data.jsonl import strict_lines
from tasks.base import Cell, TaskParams
from tasks.generation import encode
from tasks.longqa.metrics import contains_answer
from tasks.longqa.source import QAPrompt, Source, check_fit, split_names


@dataclass(frozen=True)
class DatasetSpec:
    """A LongBench dataset's prompt template ({context}, {input}), generation budget and headline metric."""

    template: str
    max_new_tokens: int
    metric: str = "f1"
    first_line: bool = False  # LongBench keeps only the first line of the prediction (few-shot datasets)
    stop_newline: bool = False  # LongBench also stops generating at a newline (samsum)


_HOTPOT = ("Answer the question based on the given passages. "
           "Only give me the answer and do not output any other "
           "words.\n\nThe following are given passages.\n{context}\n\n"
           "Answer the question based on the given "
           "passages. Only give me the answer and do not output any other words.\n\n"
           "Question: {input}\nAnswer:")
_QASPER_RULE = ("as concisely as you can, using a single phrase or sentence if possible. "
                "If the question cannot be "
                "answered based on the information in the article, write \"unanswerable\". "
                "If the question is a "
                "yes/no question, answer \"yes\", \"no\", or \"unanswerable\". "
                "Do not provide any explanation.")

DATASETS: dict[str, DatasetSpec] = {
    "narrativeqa": DatasetSpec(
        "You are given a story, which can be either a novel or a movie script, and a question. "
        "Answer the question "
        "asconcisely as you can, using a single phrase if possible. "
        "Do not provide any explanation.\n\nStory: "
        "{context}\n\nNow, answer the question based on the story asconcisely as you can, "
        "using a single phrase if "
        "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:", 128),
    "qasper": DatasetSpec(
        "You are given a scientific article and a question. Answer the question " + _QASPER_RULE
        + "\n\nArticle: {context}\n\n Answer the question based on the above article " + _QASPER_RULE
        + "\n\nQuestion: {input}\n\nAnswer:", 128),
    "multifieldqa_en": DatasetSpec(
        "Read the following text and answer briefly.\n\n{context}\n\n"
        "Now, answer the following question based on "
        "the above text, only give me the answer and do not output any other words.\n\n"
        "Question: {input}\nAnswer:",
        64),
    "hotpotqa": DatasetSpec(_HOTPOT, 32),
    "2wikimqa": DatasetSpec(_HOTPOT, 32),
    "musique": DatasetSpec(_HOTPOT, 32),
    "gov_report": DatasetSpec(
        "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
        "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:", 512, "rouge_l"),
    "qmsum": DatasetSpec(
        "You are given a meeting transcript and a query containing a question or instruction. "
        "Answer the query in "
        "one or more sentences.\n\nTranscript:\n{context}\n\n"
        "Now, answer the query based on the above meeting "
        "transcript in one or more sentences.\n\nQuery: {input}\nAnswer:", 512, "rouge_l"),
    "multi_news": DatasetSpec(
        "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\n"
        "Now, write a one-page summary of all the news.\n\nSummary:", 512, "rouge_l"),
    "triviaqa": DatasetSpec(
        "Answer the question based on the given passage. Only give me the answer and do not output any other "
        "words. The following are some examples.\n\n{context}\n\n{input}", 32, first_line=True),
    "samsum": DatasetSpec(
        "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n"
        "{input}", 128, "rouge_l", first_line=True, stop_newline=True),
}
GENERIC = DatasetSpec("Read the following text and answer the question briefly.\n\n{context}\n\n"
                      "Now, answer the "
                      "question based on the above text. Only give the answer.\n\n"
                      "Question: {input}\nAnswer:", 64)
DEFAULT_HF_DATASETS = ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
                       "gov_report", "qmsum", "multi_news", "triviaqa", "samsum")
PADS = ("others", "corpus", "none")


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a dataset (LongBench-E names ending in _e share their base dataset's), else GENERIC."""
    return DATASETS.get(name) or DATASETS.get(name.removesuffix("_e")) or GENERIC


@dataclass(frozen=True)
class QARow:
    dataset: str
    qa_id: str
    question: str
    context: str
    answers: tuple[str, ...]


def _row_from_json(obj: Any, where: str, default_dataset: str) -> QARow:
    if not isinstance(obj, dict):
        raise InputError(f"{where} is not a JSON object: "
                         "each line needs input, context and answers (LongBench format)")
    missing = [k for k in ("input", "context", "answers") if k not in obj or obj[k] is None]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}: each row needs input, context and answers "
                         "(LongBench format; dataset and _id optional)")
    answers = obj["answers"]
    answers = ([answers] if isinstance(answers, str)
               else list(answers) if isinstance(answers, (list, tuple)) else None)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{where}: answers must be a non-empty list of strings: fix the row")
    if not isinstance(obj["context"], str) or not isinstance(obj["input"], str):
        raise InputError(f"{where}: input and context must be strings: fix the row")
    return QARow(str(obj.get("dataset") or default_dataset), str(obj.get("_id") or where), obj["input"],
                 obj["context"], tuple(answers))


def _read_jsonl_rows(path: Path, default_dataset: str) -> list[QARow]:
    return [_row_from_json(obj, f"{path.name}:{line_no}", default_dataset)
            for line_no, obj in strict_lines(path)]


def _read_hf_rows(source: str, names: Sequence[str]) -> list[QARow]:
    """hf:ID[:SPLIT] (or a bare owner/name): one config per dataset name, split default "test"."""
    body = source[3:] if source.startswith("hf:") else source
    repo, _, split = body.partition(":")
    split = split or "test"
    import datasets

    from harness.data.hub import use_cache_if_hub_unreachable

    use_cache_if_hub_unreachable()
    rows: list[QARow] = []
    for name in names:
        try:
            data = datasets.load_dataset(repo, name, split=split)
        except Exception as exc:  # network, a dataset script `datasets` refuses, missing config
            raise InputError(f"cannot load {repo!r} config {name!r} ({one_line(exc, 160)}): "
                             "check the id and the "
                             "network, or download LongBench's data.zip "
                             "and pass its folder as --source DIR") from None
        for i, obj in enumerate(data):
            rows.append(_row_from_json(dict(obj), f"{repo}:{name}:{split}:{i}", name))
    return rows


def load_rows(source: str, datasets: Sequence[str]) -> list[QARow]:
    """All rows of the selected datasets, grouped by dataset (in `datasets` order, else first appearance)."""
    path = Path(source)
    if source.startswith("hf:") or (not path.exists() and source.count("/") == 1
                                    and not source.endswith(".jsonl")
                                    and not source.startswith((".", "/", "~"))):
        return _read_hf_rows(source, list(datasets) or list(DEFAULT_HF_DATASETS))
    if not path.exists():
        raise InputError(f"--source {source!r} does not exist: "
                         "pass a LongBench-format .jsonl file, a folder of "
                         "<dataset>.jsonl files, hf:ID, or omit --source for the synthetic QA")
    if path.is_dir():
        files = {p.stem: p for p in sorted(path.glob("*.jsonl"))}
        if not files:
            raise InputError(f"--source folder {source!r} has no .jsonl files: pass LongBench's data folder")
        unknown = [n for n in datasets if n not in files]
        if unknown:
            raise InputError(f"--qa-datasets {','.join(unknown)} not in {source} (has {', '.join(files)}): "
                             "pick datasets from that list")
        rows = [r for n in (datasets or list(files)) for r in _read_jsonl_rows(files[n], n)]
    elif path.suffix == ".jsonl":
        rows = _read_jsonl_rows(path, path.stem)
    else:
        raise InputError(f"--source {source!r} is not a .jsonl file or a folder: "
                         "pass LongBench-format JSONL")
    present = list(dict.fromkeys(r.dataset for r in rows))
    wanted = list(datasets) or present
    unknown = [n for n in wanted if n not in present]
    if unknown:
        raise InputError(f"--qa-datasets {','.join(unknown)} not in {source} "
                         f"(has {', '.join(present) or 'no rows'}):"
                         " pick datasets from that list")
    order = {n: i for i, n in enumerate(wanted)}
    return sorted((r for r in rows if r.dataset in order), key=lambda r: order[r.dataset])


def middle_truncate(ids: Sequence[int], budget: int) -> tuple[list[int], list[int], int]:
    """Keep the first ceil(budget/2) and last floor(budget/2) tokens: (head part, tail part, tokens cut)."""
    ids = list(ids)
    if len(ids) <= budget:
        return ids, [], 0
    front = (budget + 1) // 2
    back = budget - front
    return ids[:front], ids[len(ids) - back:] if back else [], len(ids) - budget


class LongBenchSource(Source):
    """Rows of the selected datasets; each cell's context is cut in the middle or padded to the budget."""

    foreign = ("qa_hops", "qa_distractors")
    refusal = ("{flag} applies to the synthetic QA, not to --source {source}: "
               "drop {flag}, or drop --source for "
               "the synthetic QA")

    def __init__(self, options: dict[str, Any], cache: dict[Any, Any]) -> None:
        super().__init__(options, cache)
        self.source = str(options["source"])
        self.datasets = split_names(options.get("qa_datasets"))
        self.pad = options.get("qa_pad") or "others"
        if self.pad not in PADS:
            raise InputError(f"--qa-pad {self.pad!r}: pass others, corpus or none")
        self.by_dataset: dict[str, list[int]] = {}
        self.contexts: dict[int, list[int]] = {}  # tokenised contexts, the 16 most recent
        self.in_full: dict[int, bool] = {}

    def identity(self) -> dict[str, Any]:
        return {"source": self.source, "qa_datasets": ",".join(self.datasets) or None, **super().identity(),
                "qa_pad": self.pad}

    @property
    def rows(self) -> list[QARow]:
        """The selected datasets' rows, read once per task (the cache outlives this source)."""
        key = (self.source, tuple(self.datasets))
        if key not in self.cache:
            self.cache[key] = load_rows(*key)
        return self.cache[key]

    def samples(self, params: TaskParams, warn: Callable[[str], None] | None = None) -> list[int]:
        """Row indices: each dataset's first `params.samples` rows."""
        taken: Counter[str] = Counter()
        picked = []
        for i, row in enumerate(self.rows):
            if taken[row.dataset] < params.samples:
                taken[row.dataset] += 1
                picked.append(i)
        if warn is not None:
            for name, n in taken.items():
                if n < params.samples:
                    warn(f"longqa: dataset {name} has {n} row(s), "
                         f"fewer than --samples {params.samples}: running {n}")
        return picked

    def load(self, shortest: int, warn: Callable[[str], None]) -> None:
        rows = self.rows
        selected = self.samples(self.params, warn)
        for i, row in enumerate(rows):
            self.by_dataset.setdefault(row.dataset, []).append(i)
        worst = (0, "")
        for i in selected:
            head, tail = self._fixed(rows[i])
            worst = max(worst, (len(head) + len(tail), f"{rows[i].dataset} question {rows[i].qa_id}"))
        if selected:
            check_fit(worst[0], shortest, f"the prompt of {worst[1]}")

    def _fixed(self, row: QARow) -> tuple[list[int], list[int]]:
        """(head, tail) ids around the context: the template with the question, BOS and chat wrap."""
        spec = dataset_spec(row.dataset)
        before, found, after = spec.template.partition("{context}")
        if not found:  # pragma: no cover - every template has a context slot
            before, after = "", spec.template
        head = self.head_ids(before.replace("{input}", row.question))
        tail = encode(self.tokenizer, after.replace("{input}", row.question) + self.wrap.post)
        return head, tail

    def _context_ids(self, index: int) -> list[int]:
        if index not in self.contexts:
            if len(self.contexts) >= 16:
                self.contexts.pop(next(iter(self.contexts)))
            self.contexts[index] = encode(self.tokenizer, self.rows[index].context)
        return self.contexts[index]

    def _pad_docs(self, index: int) -> Iterator[list[int]]:
        """Token lists of padding documents: the dataset's other rows (cyclic from the next one), else the
        corpus."""
        others = [i for i in self.by_dataset[self.rows[index].dataset] if i != index]
        if self.pad == "others" and others:
            pos = sum(1 for i in others if i < index)
            while True:
                for i in others[pos:] + others[:pos]:
                    yield self._context_ids(i)
        from harness.data.corpus import token_documents

        corpus = self.params.corpus
        while True:
            got = False
            for _, ids in token_documents(corpus, lambda text: encode(self.tokenizer, text)):
                got = True
                yield ids
            if not got:
                raise InputError(f"corpus {corpus!r} has no text to pad with: "
                                 "pass another --corpus or --qa-pad none")

    def _padding(self, index: int, before: int, after: int) -> tuple[list[int], list[int]]:
        """`before` tokens ending in a blank line and `after` tokens starting with one, from padding
        documents."""
        sep = encode(self.tokenizer, "\n\n")
        docs = self._pad_docs(index)
        after_ids: list[int] = []
        while len(after_ids) < after:
            after_ids += sep + next(docs)
        before_ids: list[int] = []
        while len(before_ids) < before:
            before_ids = next(docs) + sep + before_ids
        return before_ids[len(before_ids) - before:] if before else [], after_ids[:after]

    def build(self, cell: Cell) -> QAPrompt:
        tok = self.tokenizer
        row = self.rows[cell.sample]
        spec = dataset_spec(row.dataset)
        head, tail = self._fixed(row)
        check_fit(len(head) + len(tail), cell.length, f"the prompt of {row.dataset} question {row.qa_id}")
        context = self._context_ids(cell.sample)
        budget = cell.length - len(head) - len(tail)
        front, back, cut = middle_truncate(context, budget)
        summary = spec.metric == "rouge_l"
        if cell.sample not in self.in_full:
            self.in_full[cell.sample] = not summary and contains_answer(row.context, row.answers)
        in_full = self.in_full[cell.sample]
        if summary:
            in_context = cut == 0
        elif cut:
            in_context = (contains_answer(tok.decode(front), row.answers)
                          or contains_answer(tok.decode(back), row.answers))
        else:
            in_context = in_full
        pad = budget - len(context) if not cut and self.pad != "none" else 0
        depth = cell.depth
        if depth is None:
            depth = random.Random(f"longqa-depth:{self.params.seed}:{row.dataset}:{row.qa_id}").random()
        before, after = (self._padding(cell.sample, round(depth * pad), pad - round(depth * pad))
                         if pad else ([], []))
        ids = head + before + front + back + after + tail
        assert pad == 0 and self.pad == "none" or len(ids) == cell.length, (len(ids), cell.length)
        stop = []
        if spec.stop_newline:
            newline = encode(tok, "\n")
            stop = newline if len(newline) == 1 else []
        record = {"source": self.source, "dataset": row.dataset, "qa_id": row.qa_id,
                  "prompt_tokens": len(ids), "context_tokens": len(context), "truncated_tokens": cut,
                  "pad_tokens": pad,
                  "context_depth": depth if pad else None, "answer_in_context": bool(in_context),
                  "answer_in_full_context": bool(in_full) if not summary else None}
        return QAPrompt(ids, self.max_new_tokens or spec.max_new_tokens, stop, row.answers, spec.metric,
                      first_line=spec.first_line, record=record)
