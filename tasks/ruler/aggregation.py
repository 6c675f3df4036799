"""RULER's aggregation families: common words extraction (`cwe`) and frequent words extraction (`fwe`).

cwe (scripts/data/synthetic/common_words_extraction.py): a numbered list of words, num_cw common words
repeated freq_cw times and the others freq_ucw times, shuffled; RULER's frequencies depend on the length
(below 4K: 6 and 1, with a worked example of 20 words at 3 and 1; else 30 and 3, example of 40 words at
10 and 3; the example, as for vt, by default only where it takes at most a quarter of the prompt).
References: the common words (string_match_all). Words: wonderwords' nouns, adjectives, verbs.
fwe (freq_words_extraction.py): coded 6-letter words with Zipf counts n k^-alpha / zeta(alpha) over a
vocabulary of (L - 50) // 50 words, the most frequent one replaced by '...'; references: ranks 2 to 4.

Exact length: the list (or text) is the haystack: the number of words is the smallest whose text fills the
tokens left after the fixed parts, and the text is cut there (the cut drops at most the last few items).
Lists depend on (seed, sample, length).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from harness.core.errors import InputError
from tasks.base import Cell, TaskParams
from tasks.generation import Wrap, encode
from tasks.passkey.haystack import encode_offsets
from tasks.ruler.haystack import Stream
from tasks.ruler.layout import Frame, RulerPrompt, assemble, fixed_parts
from tasks.ruler.options import ALPHA, FREQ_CW, FREQ_UCW, NUM_CW, NUM_FEWSHOT, keep_examples, number
from tasks.ruler.task import Family
from tasks.ruler.words import coded_words, plain_words

CWE_HEAD = ("Below is a numbered list of words. In these words, some appear more often than others. "
            "Memorize the ones that appear most often.\n")
CWE_QUESTION = "\nQuestion: What are the {num_cw} most common words in the above list?"
CWE_PREFIX = " Answer: The top {num_cw} words that appear most often in the list are:"
FWE_HEAD = ("Read the following coded text and track the frequency of each coded word. Find the three most "
            "frequently appeared coded words. ")
FWE_QUESTION = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the "
                "three most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
SHORT = 4096  # RULER's cwe switches frequencies at this length


def smallest_fill(count: Callable[[int], int], need: int, guess: int, low: int, high: int) -> int:
    """The smallest n in [low, high] whose text has at least `need` tokens (high when none has)."""
    lo, hi = low, max(low, min(high, guess))
    while count(hi) < need and hi < high:
        lo, hi = hi + 1, min(high, hi * 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) >= need:
            hi = mid
        else:
            lo = mid + 1
    return hi


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


@dataclass(frozen=True)
class CWEConfig:
    freq_cw: int | None  # None: RULER's by length
    freq_ucw: int | None
    num_cw: int
    num_fewshot: int | None  # None: RULER's one where it takes at most a quarter of the prompt
    max_new_tokens: int
    chat_template: bool


def cwe_list(rng: random.Random, words: int, common: int, freq_cw: int,
             freq_ucw: int) -> tuple[str, list[str]]:
    picked = rng.sample(plain_words(), words)
    items = picked[:common] * freq_cw + picked[common:] * freq_ucw
    rng.shuffle(items)
    return numbered(items), picked[:common]


class CWEFamily(Family):
    kind = "common_words_extraction"
    options = (FREQ_CW, FREQ_UCW, NUM_CW, NUM_FEWSHOT)

    def resolve(self, params: TaskParams) -> CWEConfig:
        o = params.options or {}
        cw = number(o, "freq_cw", 30, 2, 10000) if o.get("freq_cw") is not None else None
        ucw = number(o, "freq_ucw", 3, 1, 10000) if o.get("freq_ucw") is not None else None
        return CWEConfig(cw, ucw, number(o, "num_cw", 10, 1, 100), number(o, "num_fewshot", None, 0, 4),
                         number(o, "max_new_tokens", 120, 1, 4096), bool(o.get("chat_template")))

    def build(self, tokenizer, wrap: Wrap, params: TaskParams, config: CWEConfig, shared: None,
              cell: Cell) -> RulerPrompt:
        short = cell.length < SHORT
        cw = config.freq_cw or (6 if short else 30)
        ucw = config.freq_ucw or (1 if short else 3)
        if cw <= ucw:
            raise InputError(f"--freq-cw {cw} must be above --freq-ucw {ucw}: common words are the "
                             "more frequent ones")
        n = config.num_cw
        rng = random.Random(f"ruler-cwe|{params.seed}|{cell.sample}|{cell.length}")
        question, prefix = CWE_QUESTION.format(num_cw=n), CWE_PREFIX.format(num_cw=n)
        shots = []
        for _ in range(1 if config.num_fewshot is None else config.num_fewshot):
            text, answer = cwe_list(rng, 20 if short else 40, n, 3 if short else 10, 1 if short else 3)
            shots.append(CWE_HEAD + text + question + prefix + " " + numbered(answer))
        shot_tokens = len(encode(tokenizer, "\n".join(shots) + "\n"))
        if not keep_examples(shot_tokens, cell.length, config.num_fewshot):
            shots = []
        head = "\n".join(shots) + "\n" + CWE_HEAD if shots else CWE_HEAD
        frame = Frame(head, question, prefix)
        empty = Stream((), (0,), "list")
        head_ids, _, _, tail_ids = fixed_parts(tokenizer, frame, wrap, empty, [])
        hay = max(0, cell.length - len(head_ids) - len(tail_ids))
        seed = f"ruler-cwe-list|{params.seed}|{cell.sample}|{cell.length}"
        lists: dict[int, tuple[str, list[str]]] = {}

        def render(words: int) -> tuple[str, list[str]]:
            if words not in lists:
                lists[words] = cwe_list(random.Random(f"{seed}|{words}"), words, n, cw, ucw)
            return lists[words]

        available = len(plain_words())
        words = smallest_fill(lambda w: len(encode(tokenizer, render(w)[0])), hay,
                              max(n + 1, hay // (3 * ucw + 1)), n + 1, available)
        text, common = render(words)
        ids, spans = encode_offsets(tokenizer, text)
        if len(ids) < hay:
            raise InputError(f"cwe at length {cell.length} needs more than the {available} words of its word "
                             "list: use shorter --lengths or smaller --freq-ucw")
        built = assemble(tokenizer, cell.length, frame, wrap, Stream(tuple(ids), (0,), "word list"), [],
                         "RULER cwe", ", or --num-fewshot 0" if shots else "")
        kept = Counter(re.findall(r"\d+\. ([A-Za-z]+)(?= |$)", text[:spans[hay - 1][1]] if hay else ""))
        least = min(kept.get(w, 0) for w in common)
        most_other = max((c for w, c in kept.items() if w not in common), default=0)
        if least <= most_other:
            raise InputError(f"--lengths {cell.length} is too short for cwe: its list of {n} common words x "
                             f"{cw} does not fit the {hay} tokens left, so common words stop being the most "
                             "common: use longer --lengths" + (" or --num-fewshot 0" if shots else ""))
        prompt = RulerPrompt(built.ids, tuple(common), "all", config.max_new_tokens,
                             chance_score=min(1.0, n / words))
        prompt.record = {"words": words, "freq_cw": cw, "freq_ucw": ucw, "num_cw": n,
                         "fewshot": len(shots), "least_common_count": least,
                         "most_uncommon_count": most_other, "haystack_tokens": built.haystack_tokens}
        return prompt


def zeta(alpha: float, terms: int = 100000) -> float:
    """Riemann zeta(alpha) for alpha > 1: a partial sum and the tail's integral (error < 1e-10 at 2)."""
    head = math.fsum(k ** -alpha for k in range(1, terms + 1))
    return head + terms ** (1 - alpha) / (alpha - 1) - 0.5 * terms ** -alpha


@dataclass(frozen=True)
class FWEConfig:
    alpha: float
    max_new_tokens: int
    chat_template: bool


class FWEFamily(Family):
    kind = "freq_words_extraction"
    options = (ALPHA,)

    def resolve(self, params: TaskParams) -> FWEConfig:
        o = params.options or {}
        alpha = number(o, "alpha", 2.0, 1.01, 10.0, whole=False)
        return FWEConfig(alpha, number(o, "max_new_tokens", 50, 1, 4096), bool(o.get("chat_template")))

    def build(self, tokenizer, wrap: Wrap, params: TaskParams, config: FWEConfig, shared: None,
              cell: Cell) -> RulerPrompt:
        size = (cell.length - 50) // 50  # RULER: (max_seq_length - tokens_to_generate) // 50
        if size < 5:
            raise InputError(f"--lengths {cell.length} is too short for fwe: RULER's vocabulary of "
                             "(L - 50) // 50 "
                             "words needs at least 5 words: use --lengths of at least 300")
        rng = random.Random(f"ruler-fwe|{params.seed}|{cell.sample}|{cell.length}")
        vocab = coded_words(rng, size)
        vocab[0] = "..."  # RULER: the top-ranked word is noise
        norm, shuffle_seed = zeta(config.alpha), rng.random()
        frame = Frame(FWE_HEAD, FWE_QUESTION, FWE_PREFIX)
        head_ids, _, _, tail_ids = fixed_parts(tokenizer, frame, wrap, Stream((), (0,), "text"), [])
        hay = max(0, cell.length - len(head_ids) - len(tail_ids))

        def render(total: int) -> str:
            words = [w for k, w in enumerate(vocab, 1) for _ in range(int(total * k ** -config.alpha / norm))]
            random.Random(shuffle_seed).shuffle(words)
            return " ".join(words)

        total = smallest_fill(lambda t: len(encode(tokenizer, render(t))), hay, max(8, hay // 2), 1, 1 << 26)
        ids = encode(tokenizer, render(total))
        built = assemble(tokenizer, cell.length, frame, wrap, Stream(tuple(ids), (0,), "coded text"), [],
                         "RULER fwe")
        answers = tuple(vocab[1:4])
        counts = [int(total * k ** -config.alpha / norm) for k in range(1, 6)]
        prompt = RulerPrompt(built.ids, answers, "all", config.max_new_tokens, chance_score=3 / (size - 1))
        prompt.record = {"vocabulary": size, "words": total, "alpha": config.alpha,
                         "rank_counts": ",".join(map(str, counts)), "haystack_tokens": built.haystack_tokens}
        return prompt
