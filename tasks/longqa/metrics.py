"""Answer metrics of the long-document QA, as LongBench and SQuAD compute them.

`f1` token F1 after SQuAD/LongBench answer normalisation (lower case, no punctuation, no a/an/the, single
spaces), `rouge_l` ROUGE-L F-measure (rouge_score, no stemming), `exact_match` (normalised equality),
`substring_match` (normalised answer is a whole-word span of the normalised prediction); each is the best
over the reference answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

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
    if _ROUGE is None:  # imported on first use: the synthetic QA never needs it
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_ROUGE.score(answer, prediction)["rougeL"].fmeasure)


METRICS = {"f1": token_f1, "rouge_l": rouge_l, "exact_match": exact_match, "substring_match": substring_match}


def best_scores(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """Every metric, each the best over the reference answers."""
    return {name: max(fn(prediction, a) for a in answers) for name, fn in METRICS.items()}


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """A reference answer (normalised, whole words) occurs in `text`: is the answer still in the context?"""
    norm = f" {normalize_answer(text)} "
    return any(g and f" {g} " in norm for g in (normalize_answer(a) for a in answers))
