"""Long-document QA at exact token lengths: LongBench-format datasets and an offline synthetic QA.

Two sources, one prompt shape: HEAD + BODY + TAIL, exactly L tokens (BOS included; the generation budget
comes on top). HEAD/TAIL are the fixed parts (BOS, chat-template wrap, instruction, question); the BODY is
the long context, sized to the remaining budget B = L - |HEAD| - |TAIL|.

**LongBench format** (`--source FILE.jsonl | DIR | hf:ID`): rows with `input`, `context`, `answers`
(`dataset`, `_id` optional: the file name / line number stand in). Per-dataset prompt templates, generation
budgets and metrics follow LongBench (config/dataset2prompt.json, dataset2maxlen.json, metrics.py); an
unknown dataset gets a generic QA template (64 new tokens, token F1). Context longer than B: the middle
is cut, the first ceil(B/2) and last floor(B/2) tokens are kept (`truncated_tokens`). Context shorter than
B (`--qa-pad`, default `others`): RULER-style distractor padding with other rows' contexts of the same
dataset (falling back to `--corpus` text when the dataset has one row), the original context placed at the
cell's depth (a seeded per-question depth when `--depths` is not given, `context_depth` in the record);
`--qa-pad none` keeps the prompt short and records its true `prompt_tokens`. The sample index of a cell is
the row's index among the selected datasets' rows (datasets in `--qa-datasets` order, rows in file order);
`--samples N` takes each dataset's first N rows, so indices stay put when N changes.

**Synthetic** (`--source` omitted): facts inserted into real long text from `--corpus` (default: the
stdlib held-out split, documents concatenated with blank lines; question i reads the stream from token
i x max(lengths), wrapping around when the corpus is short). A question is a chain of `hops` facts
(1: "The access code of the X is N."; 2: X kept in vault V, V opens with N; 3: X belongs to P, P keeps
everything in V, V opens with N) plus `--qa-distractors` facts from other chains of the same shape, all
seeded by (seed, sample). The first fact of the chain sits at the cell's depth (a seeded fraction when no
depth is given), the others at seeded fractions; facts go after a line break when one is within 48 tokens.
Scores: greedy generation match (first integer == the code) and the teacher-forced log-prob and worst rank
of the continuation " N" tokenised in context (`answer_logprob`, `answer_rank`), as in the passkey task.

Metrics (every record; `metric`/`score` name the dataset's headline): `f1` token F1 after SQuAD/LongBench
answer normalisation (lower case, no punctuation, no a/an/the, single spaces), `rouge_l` ROUGE-L F-measure
(rouge_score, no stemming), `exact_match` (normalised equality), `substring_match` (normalised answer is a
whole-word span of the normalised prediction); each is the best over the reference answers.
`answer_in_context`: a reference answer (normalised, whole words) is in the context that survived truncation
(summaries: nothing was truncated); `answer_in_full_context`: the same before truncation.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.corpus import jsonl_objects
from harness.errors import InputError, one_line
from harness.report_longqa import FIGURES, MEASURE
from tasks.base import (
    Cell,
    RunContext,
    Task,
    TaskParams,
    chat_wrapper,
    first_integer,
    int_option,
    parse_depths,
)

__all__ = ["FIGURES", "MEASURE", "TASK", "LongQATask", "exact_match", "normalize_answer", "rouge_l",
           "substring_match", "token_f1"]

# ============================================================================================== metrics

_PUNCT_TABLE = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD / LongBench normalisation: lower case, drop punctuation, drop articles, collapse spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT_TABLE)).split())


def token_f1(prediction: str, answer: str) -> float:
    """Token-level F1 of the normalised strings (LongBench qa_f1_score / SQuAD f1)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, answer: str) -> float:
    gold = normalize_answer(answer)
    return float(bool(gold) and normalize_answer(prediction) == gold)


def substring_match(prediction: str, answer: str) -> float:
    """1.0 when the normalised answer is a whole-word span of the normalised prediction."""
    gold = normalize_answer(answer)
    return float(bool(gold) and f" {gold} " in f" {normalize_answer(prediction)} ")


_ROUGE = None


def rouge_l(prediction: str, answer: str) -> float:
    """ROUGE-L F-measure (rouge_score: lower-cased alphanumeric tokens, no stemming)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_ROUGE.score(answer, prediction)["rougeL"].fmeasure)


METRICS = {"f1": token_f1, "rouge_l": rouge_l, "exact_match": exact_match, "substring_match": substring_match}


def best_scores(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """Every metric, each the best over the reference answers."""
    return {name: max(fn(prediction, a) for a in answers) for name, fn in METRICS.items()}


def _contains_answer(text: str, answers: Sequence[str]) -> bool:
    norm = f" {normalize_answer(text)} "
    return any(g and f" {g} " in norm for g in (normalize_answer(a) for a in answers))


# ==================================================================================== LongBench datasets


@dataclass(frozen=True)
class DatasetSpec:
    """A LongBench dataset's prompt template ({context}, {input}), generation budget and headline metric."""

    template: str
    max_new_tokens: int
    metric: str = "f1"
    first_line: bool = False  # LongBench keeps only the first line of the prediction (few-shot datasets)
    stop_newline: bool = False  # LongBench also stops generating at a newline (samsum)


_HOTPOT = ("Answer the question based on the given passages. Only give me the answer and do not output any other "
           "words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given "
           "passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:")
_QASPER_RULE = ("as concisely as you can, using a single phrase or sentence if possible. If the question cannot be "
                "answered based on the information in the article, write \"unanswerable\". If the question is a "
                "yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.")

DATASETS: dict[str, DatasetSpec] = {
    "narrativeqa": DatasetSpec(
        "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        "asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
        "{context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if "
        "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:", 128),
    "qasper": DatasetSpec(
        "You are given a scientific article and a question. Answer the question " + _QASPER_RULE
        + "\n\nArticle: {context}\n\n Answer the question based on the above article " + _QASPER_RULE
        + "\n\nQuestion: {input}\n\nAnswer:", 128),
    "multifieldqa_en": DatasetSpec(
        "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on "
        "the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
        64),
    "hotpotqa": DatasetSpec(_HOTPOT, 32),
    "2wikimqa": DatasetSpec(_HOTPOT, 32),
    "musique": DatasetSpec(_HOTPOT, 32),
    "gov_report": DatasetSpec(
        "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n"
        "{context}\n\nNow, write a one-page summary of the report.\n\nSummary:", 512, "rouge_l"),
    "qmsum": DatasetSpec(
        "You are given a meeting transcript and a query containing a question or instruction. Answer the query in "
        "one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting "
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
GENERIC = DatasetSpec("Read the following text and answer the question briefly.\n\n{context}\n\nNow, answer the "
                      "question based on the above text. Only give the answer.\n\nQuestion: {input}\nAnswer:", 64)
DEFAULT_HF_DATASETS = ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "gov_report",
                       "qmsum", "multi_news", "triviaqa", "samsum")


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
        raise InputError(f"{where} is not a JSON object: each line needs input, context and answers (LongBench format)")
    missing = [k for k in ("input", "context", "answers") if k not in obj or obj[k] is None]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}: each row needs input, context and answers "
                         "(LongBench format; dataset and _id optional)")
    answers = obj["answers"]
    answers = [answers] if isinstance(answers, str) else list(answers) if isinstance(answers, (list, tuple)) else None
    if not answers or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{where}: answers must be a non-empty list of strings: fix the row")
    if not isinstance(obj["context"], str) or not isinstance(obj["input"], str):
        raise InputError(f"{where}: input and context must be strings: fix the row")
    return QARow(str(obj.get("dataset") or default_dataset), str(obj.get("_id") or where), obj["input"],
                 obj["context"], tuple(answers))


def _read_jsonl_rows(path: Path, default_dataset: str) -> list[QARow]:
    return [_row_from_json(obj, f"{path.name}:{line_no}", default_dataset) for line_no, obj in jsonl_objects(path)]


def _read_hf_rows(spec: str, names: Sequence[str]) -> list[QARow]:
    """hf:ID[:SPLIT] (or a bare owner/name): one config per dataset name, split default "test"."""
    body = spec[3:] if spec.startswith("hf:") else spec
    repo, _, split = body.partition(":")
    split = split or "test"
    import datasets

    from harness.models import use_cache_if_hub_unreachable

    use_cache_if_hub_unreachable()
    rows: list[QARow] = []
    for name in names:
        try:
            data = datasets.load_dataset(repo, name, split=split)
        except Exception as exc:  # network, scripts no longer supported, missing config: one message
            raise InputError(f"cannot load {repo!r} config {name!r} ({one_line(exc, 160)}): check the id and the network, or "
                             "download LongBench's data.zip and pass its folder as --source DIR") from None
        for i, obj in enumerate(data):
            rows.append(_row_from_json(dict(obj), f"{repo}:{name}:{split}:{i}", name))
    return rows


def _split_names(value: Any) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(s).strip() for s in items if str(s).strip()]


def load_rows(source: str, datasets: Sequence[str]) -> list[QARow]:
    """All rows of the selected datasets, grouped by dataset (in `datasets` order, else first appearance)."""
    path = Path(source)
    if source.startswith("hf:") or (not path.exists() and source.count("/") == 1 and not source.endswith(".jsonl")
                                    and not source.startswith((".", "/", "~"))):
        return _read_hf_rows(source, list(datasets) or list(DEFAULT_HF_DATASETS))
    if not path.exists():
        raise InputError(f"--source {source!r} does not exist: pass a LongBench-format .jsonl file, a folder of "
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
        raise InputError(f"--source {source!r} is not a .jsonl file or a folder: pass LongBench-format JSONL")
    present = list(dict.fromkeys(r.dataset for r in rows))
    wanted = list(datasets) or present
    unknown = [n for n in wanted if n not in present]
    if unknown:
        raise InputError(f"--qa-datasets {','.join(unknown)} not in {source} (has {', '.join(present) or 'no rows'}):"
                         " pick datasets from that list")
    order = {n: i for i, n in enumerate(wanted)}
    return sorted((r for r in rows if r.dataset in order), key=lambda r: order[r.dataset])


# ================================================================================== synthetic questions

_ADJECTIVES = ("amber", "silver", "crimson", "velvet", "granite", "copper", "ivory", "cobalt", "jade", "scarlet",
               "golden", "violet", "marble", "bronze", "azure", "ashen", "coral", "olive", "onyx", "pearl")
_NOUNS = ("compass", "lantern", "teapot", "violin", "telescope", "hourglass", "chessboard", "typewriter", "kettle",
          "globe", "saddle", "anchor", "harp", "mirror", "locket", "clock", "quill", "drum", "fan", "vase")
_VAULTS = ("Alder", "Birch", "Cedar", "Dover", "Elm", "Falcon", "Granite", "Harbor", "Iris", "Juniper", "Kestrel",
           "Linden", "Maple", "Nettle", "Orchid", "Pine", "Quarry", "Raven", "Sable", "Thistle", "Umber", "Willow")
_PEOPLE = ("Alice Brandt", "Boris Chen", "Clara Diaz", "Daniel Eze", "Elena Fischer", "Farid Gupta", "Greta Holm",
           "Hiro Ito", "Ines Jansen", "Jonas Kova", "Kira Lund", "Luca Moreau", "Mira Novak", "Nils Ortiz",
           "Olga Petrov", "Pavel Quinn", "Rosa Silva", "Sven Tanaka", "Tara Ueda", "Umar Vance")
MAX_HOPS = 3
MAX_DISTRACTORS = len(_PEOPLE) - 1  # every distractor chain needs its own entities


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


SYNTH_HEAD = ("The text below hides a few short facts among unrelated material. Read it, then answer the question "
              "after it.\n\n")
SYNTH_MAX_NEW_TOKENS = 16
SNAP_WINDOW = 48  # tokens searched on each side of a fact's position for a line break

# ====================================================================================== prompt assembly


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _head_ids(tokenizer, state: dict[str, Any], text: str) -> list[int]:
    """BOS (when on) + chat-template prefix + `text`; a template that renders BOS itself gets no second one."""
    ids = encode(tokenizer, state["pre"] + text)
    if state["bos"] and ids[:1] == state["bos"]:
        return ids
    return state["bos"] + ids


def middle_truncate(ids: Sequence[int], budget: int) -> tuple[list[int], list[int], int]:
    """Keep the first ceil(budget/2) and last floor(budget/2) tokens: (head part, tail part, tokens cut)."""
    ids = list(ids)
    if len(ids) <= budget:
        return ids, [], 0
    front = (budget + 1) // 2
    back = budget - front
    return ids[:front], ids[len(ids) - back:] if back else [], len(ids) - budget


@dataclass
class Prompt:
    """One cell's prompt (exactly L tokens unless `--qa-pad none` left it short) and how to score it."""

    ids: list[int]
    max_new_tokens: int
    stop_ids: list[int]  # besides EOS (tokenizer and generation config), added at generation time
    answers: tuple[str, ...]
    metric: str
    first_line: bool = False
    answer_ids: list[int] | None = None  # synthetic: teacher-forced continuation
    record: dict[str, Any] = field(default_factory=dict)


def _hops(value: Any) -> list[int]:
    names = [str(value)] if isinstance(value, int) else _split_names(value) if value is not None else ["1", "2"]
    try:
        hops = [int(h) for h in names]
    except ValueError:
        hops = []
    if not hops or any(not 1 <= h <= MAX_HOPS for h in hops):
        raise InputError(f"--qa-hops {value!r}: pass hop counts between 1 and {MAX_HOPS}, e.g. --qa-hops 1,2")
    return hops


# ===================================================================================================== task


class LongQATask(Task):
    name = "longqa"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--source", dest="source", default=None, metavar="FILE.jsonl|DIR|hf:ID",
                            help="longqa: LongBench-format data (a .jsonl file, a folder of <dataset>.jsonl, or a "
                                 "Hugging Face id); omitted: the offline synthetic QA over --corpus")
        parser.add_argument("--qa-datasets", dest="qa_datasets", default=None, metavar="NAMES",
                            help="longqa: comma-separated LongBench datasets to run (default: all in --source; "
                                 f"hf: {','.join(DEFAULT_HF_DATASETS)})")
        parser.add_argument("--qa-hops", dest="qa_hops", default=None, metavar="H[,H...]",
                            help=f"longqa synthetic: facts per question chain, 1 (single fact) to {MAX_HOPS} "
                                 "(multi-hop); questions cycle through the list (default 1,2)")
        parser.add_argument("--qa-distractors", dest="qa_distractors", type=int, default=None, metavar="N",
                            help="longqa synthetic: distractor facts per question (default 3)")
        parser.add_argument("--qa-pad", dest="qa_pad", choices=("others", "corpus", "none"), default=None,
                            help="longqa LongBench: fill a context shorter than L with other rows' contexts of the "
                                 "same dataset (others, default), with --corpus text (corpus), or not at all (none: "
                                 "the prompt stays shorter than L)")

    @staticmethod
    def option_names() -> list[str]:
        return ["source", "qa_datasets", "qa_hops", "qa_distractors", "qa_pad", "depths", "max_new_tokens",
                "chat_template"]

    def __init__(self) -> None:
        self._rows: dict[tuple[str, tuple[str, ...]], list[QARow]] = {}

    # ------------------------------------------------------------------------------------ options
    def _resolved(self, params: TaskParams) -> dict[str, Any]:
        """Options with defaults filled in (None where a default depends on the dataset)."""
        o = params.options or {}
        synthetic = o.get("source") in (None, "", "synthetic")
        # An option of the other source would be recorded in the identity but change nothing.
        other = [k for k in (("qa_datasets", "qa_pad") if synthetic else ("qa_hops", "qa_distractors"))
                 if o.get(k) not in (None, "", [])]
        if other:
            flag = "--" + other[0].replace("_", "-")
            raise InputError(f"{flag} applies to LongBench data but no --source is given: pass --source FILE.jsonl, "
                             f"a folder or a hub id (hf:ID), or drop {flag} for the synthetic QA" if synthetic else
                             f"{flag} applies to the synthetic QA, not to --source {o['source']}: drop {flag}, or "
                             "drop --source for the synthetic QA")
        resolved = {
            "source": "synthetic" if synthetic else str(o["source"]),
            "qa_datasets": ",".join(_split_names(o.get("qa_datasets"))) or None,
            "max_new_tokens": (int_option(o, "max_new_tokens", "--max-new-tokens", 0, 1) if o.get("max_new_tokens") is not None else None),
            "chat_template": bool(o.get("chat_template")),
        }
        if synthetic:
            resolved["qa_hops"] = ",".join(map(str, _hops(o.get("qa_hops"))))
            resolved["qa_distractors"] = int_option(o, "qa_distractors", "--qa-distractors", 3, 0)
            if resolved["qa_distractors"] > MAX_DISTRACTORS:
                raise InputError(f"--qa-distractors {resolved['qa_distractors']} is more than {MAX_DISTRACTORS}: "
                                 f"pass at most {MAX_DISTRACTORS}")
        else:
            pad = o.get("qa_pad") or "others"
            if pad not in ("others", "corpus", "none"):
                raise InputError(f"--qa-pad {pad!r}: pass others, corpus or none")
            resolved["qa_pad"] = pad
        return resolved

    def identity(self, params: TaskParams) -> dict[str, Any]:
        """Everything that changes a cell's result; --depths and --samples only add or drop cells."""
        return {"corpus": params.corpus, "bos": params.bos, **self._resolved(params)}

    def rows(self, params: TaskParams) -> list[QARow]:
        opts = self._resolved(params)
        key = (opts["source"], tuple(_split_names(opts["qa_datasets"])))
        if key not in self._rows:
            self._rows[key] = load_rows(*key)
        return self._rows[key]

    def _selected(self, params: TaskParams, warn=None) -> list[int]:
        """Row indices (= cell samples): each dataset's first `samples` rows."""
        rows = self.rows(params)
        taken: Counter[str] = Counter()
        picked = []
        for i, row in enumerate(rows):
            if taken[row.dataset] < params.samples:
                taken[row.dataset] += 1
                picked.append(i)
        if warn is not None:
            for name, n in taken.items():
                if n < params.samples:
                    warn(f"longqa: dataset {name} has {n} row(s), fewer than --samples {params.samples}: running {n}")
        return picked

    # ---------------------------------------------------------------------------------- interface
    def cells(self, params: TaskParams) -> list[Cell]:
        if not params.lengths:
            raise InputError("longqa needs at least one length: pass --lengths L1,L2,...")
        if params.samples < 1:
            raise InputError(f"--samples {params.samples} must be >= 1")
        opts = self._resolved(params)
        depths = parse_depths((params.options or {}).get("depths")) or [None]
        samples = range(params.samples) if opts["source"] == "synthetic" else self._selected(params)
        return [Cell(length, depth, s) for s in samples for depth in depths for length in sorted(set(params.lengths))]

    def prepare(self, ctx: RunContext) -> None:
        params, tok = ctx.params, ctx.tokenizer
        opts = self._resolved(params)
        state: dict[str, Any] = {"opts": opts, "contexts": {}, "in_full": {}}
        bos = [tok.bos_token_id] if params.bos and tok.bos_token_id is not None else []
        chat = opts["chat_template"]
        pre, post = chat_wrapper(tok) if chat else ("", "")
        state.update(bos=bos, chat=chat, pre=pre, post=post)
        shortest = min(params.lengths)
        if opts["source"] == "synthetic":
            self._prepare_synthetic(ctx, state, shortest)
        else:
            self._prepare_longbench(ctx, state, shortest)
        ctx.state["longqa"] = state

    def score_group(self, ctx: RunContext, cells: list[Cell]) -> list[dict[str, Any]]:
        if "longqa" not in ctx.state:
            self.prepare(ctx)
        out = []
        for cell in cells:
            prompt = self.build(ctx, cell)
            new = ctx.engine.generate(prompt.ids, prompt.max_new_tokens, self._stop_ids(ctx) + prompt.stop_ids)
            text = ctx.tokenizer.decode(new, skip_special_tokens=True)
            if prompt.first_line:
                text = text.lstrip("\n").split("\n")[0]
            record = dict(prompt.record)
            scores = best_scores(text, prompt.answers)
            if prompt.answer_ids is not None:
                scores["match"] = float(first_integer(text) == prompt.answers[0])
                scored = ctx.engine.answer_score(prompt.ids, prompt.answer_ids)
                record.update(answer_logprob=scored.logprob, answer_rank=scored.rank,
                              answer_tokens=len(prompt.answer_ids))
            record.update(metric=prompt.metric, score=scores[prompt.metric], **scores, prediction=text,
                          generated_tokens=len(new), max_new_tokens=prompt.max_new_tokens)
            out.append(record)
        return out

    # ---------------------------------------------------------------------------------- shared parts
    @staticmethod
    def _stop_ids(ctx: RunContext) -> list[int]:
        ids: list[int] = []
        sources = [getattr(ctx.tokenizer, "eos_token_id", None),
                   getattr(getattr(getattr(ctx.engine, "model", None), "generation_config", None), "eos_token_id", None)]
        for value in sources:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, int) and v not in ids:
                    ids.append(v)
        return ids

    @staticmethod
    def _check_fit(fixed: int, length: int, what: str) -> None:
        if fixed >= length:
            raise InputError(f"--lengths {length} is too small for longqa: {what} needs {fixed} tokens before any "
                             f"context: use lengths >= {fixed + 1} (or fewer distractors / a shorter template)")

    def build(self, ctx: RunContext, cell: Cell) -> Prompt:
        """The prompt of one cell (exactly cell.length tokens, except `--qa-pad none` with a short context)."""
        if "longqa" not in ctx.state:
            self.prepare(ctx)
        state = ctx.state["longqa"]
        if state["opts"]["source"] == "synthetic":
            return self._build_synthetic(ctx, state, cell)
        return self._build_longbench(ctx, state, cell)

    # ---------------------------------------------------------------------------------- synthetic
    def _prepare_synthetic(self, ctx: RunContext, state: dict[str, Any], shortest: int) -> None:
        import numpy as np

        from harness.corpus import iter_documents

        params, tok, opts = ctx.params, ctx.tokenizer, state["opts"]
        hops = [int(h) for h in opts["qa_hops"].split(",")]
        window = max(params.lengths)
        need = window * params.samples
        sep = encode(tok, "\n\n")
        parts, total = [], 0
        for _, text in iter_documents(params.corpus):
            ids = encode(tok, text)
            if ids:
                parts += [ids, sep]
                total += len(ids) + len(sep)
            if total >= need:
                break
        if not total:
            raise InputError(f"corpus {params.corpus!r} has no text: pass another --corpus")
        if total < need:
            ctx.warn(f"longqa: corpus {params.corpus!r} has {total} tokens, fewer than {need} "
                     f"(samples x longest length): question haystacks wrap around and overlap")
        state["stream"] = np.fromiter((t for p in parts for t in p), dtype=np.int64, count=total)
        state["window"] = window
        questions = {}
        for s in range(params.samples):
            q = synthetic_question(params.seed, s, hops[s % len(hops)], opts["qa_distractors"])
            questions[s] = q
            fixed = len(self._synthetic_parts(tok, state, q)[0])
            self._check_fit(fixed, shortest, f"synthetic question {s} ({q.hops} hop(s), "
                                             f"{len(q.distractors)} distractors)")
        state["questions"] = questions

    @staticmethod
    def _synthetic_parts(tok, state, q: SyntheticQuestion) -> tuple[list[int], list[int], list[list[int]], str]:
        """(all fixed tokens, head, fact pieces (chain then distractors), tail text) of a question."""
        head = _head_ids(tok, state, SYNTH_HEAD)
        tail_text = f"\n\nQuestion: {q.question}" + (state["post"] if state["chat"] else "\n") + f"Answer: {q.lead}"
        pieces = [encode(tok, f"\n{fact}\n") for fact in (*q.facts, *q.distractors)]
        fixed = head + [t for p in pieces for t in p] + encode(tok, tail_text)
        return fixed, head, pieces, tail_text

    def _build_synthetic(self, ctx: RunContext, state: dict[str, Any], cell: Cell) -> Prompt:
        import numpy as np

        tok = ctx.tokenizer
        q: SyntheticQuestion = state["questions"][cell.sample]
        fixed, head, pieces, tail_text = self._synthetic_parts(tok, state, q)
        tail = encode(tok, tail_text)
        budget = cell.length - len(fixed)
        self._check_fit(len(fixed), cell.length, f"synthetic question {cell.sample}")
        stream, window = state["stream"], state["window"]
        hay = stream.take(np.arange(cell.sample * window, cell.sample * window + budget) % len(stream)).tolist()
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
        full = encode(tok, tail_text + " " + q.answer)
        answer_ids = full[len(tail):] if full[:len(tail)] == tail else encode(tok, " " + q.answer)
        budget_new = state["opts"]["max_new_tokens"] or SYNTH_MAX_NEW_TOKENS
        record = {"source": "synthetic", "dataset": f"synthetic_{q.hops}hop", "qa_id": f"seed{ctx.params.seed}:q{cell.sample}",
                  "hops": q.hops, "distractors": len(q.distractors), "answer": q.answer, "prompt_tokens": len(ids),
                  "context_tokens": budget, "truncated_tokens": 0, "pad_tokens": 0, "answer_in_context": True,
                  "answer_in_full_context": True, "fact_position": fact_position}
        return Prompt(ids, budget_new, [], (q.answer,), "match", answer_ids=answer_ids, record=record)

    # ---------------------------------------------------------------------------------- LongBench
    def _prepare_longbench(self, ctx: RunContext, state: dict[str, Any], shortest: int) -> None:
        params, tok = ctx.params, ctx.tokenizer
        rows = self.rows(params)
        selected = self._selected(params, ctx.warn)
        state["rows"] = rows
        by_dataset: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_dataset.setdefault(row.dataset, []).append(i)
        state["by_dataset"] = by_dataset
        worst = (0, "")
        for i in selected:
            head, tail = self._longbench_fixed(tok, state, rows[i])
            worst = max(worst, (len(head) + len(tail), f"{rows[i].dataset} question {rows[i].qa_id}"))
        if selected:
            self._check_fit(worst[0], shortest, f"the prompt of {worst[1]}")

    @staticmethod
    def _longbench_fixed(tok, state, row: QARow) -> tuple[list[int], list[int]]:
        spec = dataset_spec(row.dataset)
        before, found, after = spec.template.partition("{context}")
        if not found:  # pragma: no cover - every template has a context slot
            before, after = "", spec.template
        head = _head_ids(tok, state, before.replace("{input}", row.question))
        tail = encode(tok, after.replace("{input}", row.question) + state["post"])
        return head, tail

    def _context_ids(self, ctx: RunContext, state: dict[str, Any], index: int) -> list[int]:
        cache: dict[int, list[int]] = state["contexts"]
        if index not in cache:
            if len(cache) >= 16:
                cache.pop(next(iter(cache)))
            cache[index] = encode(ctx.tokenizer, state["rows"][index].context)
        return cache[index]

    def _pad_docs(self, ctx: RunContext, state: dict[str, Any], index: int, mode: str):
        """Token lists of padding documents: the dataset's other rows (cyclic from the next one), else the corpus."""
        rows = state["rows"]
        others = [i for i in state["by_dataset"][rows[index].dataset] if i != index]
        if mode == "others" and others:
            pos = sum(1 for i in others if i < index)
            while True:
                for i in others[pos:] + others[:pos]:
                    yield self._context_ids(ctx, state, i)
        from harness.corpus import iter_documents

        while True:
            got = False
            for _, text in iter_documents(ctx.params.corpus):
                ids = encode(ctx.tokenizer, text)
                if ids:
                    got = True
                    yield ids
            if not got:
                raise InputError(f"corpus {ctx.params.corpus!r} has no text to pad with: pass another --corpus "
                                 "or --qa-pad none")

    def _padding(self, ctx, state, index: int, mode: str, before: int, after: int) -> tuple[list[int], list[int]]:
        """`before` tokens ending in a blank line and `after` tokens starting with one, from padding documents."""
        sep = encode(ctx.tokenizer, "\n\n")
        docs = self._pad_docs(ctx, state, index, mode)
        after_ids: list[int] = []
        while len(after_ids) < after:
            after_ids += sep + next(docs)
        before_ids: list[int] = []
        while len(before_ids) < before:
            before_ids = next(docs) + sep + before_ids
        return before_ids[len(before_ids) - before:] if before else [], after_ids[:after]

    def _build_longbench(self, ctx: RunContext, state: dict[str, Any], cell: Cell) -> Prompt:
        tok, opts = ctx.tokenizer, state["opts"]
        row: QARow = state["rows"][cell.sample]
        spec = dataset_spec(row.dataset)
        head, tail = self._longbench_fixed(tok, state, row)
        self._check_fit(len(head) + len(tail), cell.length, f"the prompt of {row.dataset} question {row.qa_id}")
        context = self._context_ids(ctx, state, cell.sample)
        budget = cell.length - len(head) - len(tail)
        front, back, cut = middle_truncate(context, budget)
        summary = spec.metric == "rouge_l"
        if cell.sample not in state["in_full"]:
            state["in_full"][cell.sample] = not summary and _contains_answer(row.context, row.answers)
        in_full = state["in_full"][cell.sample]
        if summary:
            in_context = cut == 0
        elif cut:
            in_context = _contains_answer(tok.decode(front), row.answers) or _contains_answer(tok.decode(back), row.answers)
        else:
            in_context = in_full
        pad = budget - len(context) if not cut and opts["qa_pad"] != "none" else 0
        depth = cell.depth
        if depth is None:
            depth = random.Random(f"longqa-depth:{ctx.params.seed}:{row.dataset}:{row.qa_id}").random()
        before, after = self._padding(ctx, state, cell.sample, opts["qa_pad"], round(depth * pad),
                                      pad - round(depth * pad)) if pad else ([], [])
        ids = head + before + front + back + after + tail
        assert pad == 0 and opts["qa_pad"] == "none" or len(ids) == cell.length, (len(ids), cell.length)
        stop = []
        if spec.stop_newline:
            newline = encode(tok, "\n")
            stop = newline if len(newline) == 1 else []
        record = {"source": opts["source"], "dataset": row.dataset, "qa_id": row.qa_id, "prompt_tokens": len(ids),
                  "context_tokens": len(context), "truncated_tokens": cut, "pad_tokens": pad,
                  "context_depth": depth if pad else None, "answer_in_context": bool(in_context),
                  "answer_in_full_context": bool(in_full) if not summary else None}
        return Prompt(ids, opts["max_new_tokens"] or spec.max_new_tokens, stop, row.answers, spec.metric,
                      first_line=spec.first_line, record=record)


TASK = LongQATask()
