"""The passkey haystack: filler or corpus text with its word boundaries and one tokenisation of it.

Counting tokens from one tokenisation (instead of re-tokenising every candidate text) is what makes an
exact-length prompt of 100K+ tokens affordable; the layout solver (layout.py) corrects the few tokens
where the tokenizer merges across a piece's ends.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field

from harness.core.errors import InputError
from tasks.generation import encode

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def encode_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, char span of each token) of `text` without special tokens."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return list(enc["input_ids"]), [tuple(s) for s in enc["offset_mapping"]]
    ids = encode(tokenizer, text)
    spans, pos = [], 0  # slow tokenizer: approximate spans by decoding prefixes (only small texts here)
    for i in range(len(ids)):
        end = len(tokenizer.decode(ids[:i + 1], clean_up_tokenization_spaces=False))
        spans.append((pos, end))
        pos = end
    return ids, spans


@dataclass
class Stream:
    """A haystack text with its word boundaries and one tokenisation of it (token start offsets).

    Any word range's token count is estimated from that single tokenisation in O(log n); the estimate is
    exact except where the tokenizer merges across the range's ends, which the final re-tokenisation fixes.
    """

    text: str
    word_starts: list[int]  # char index of each word's first non-space character
    word_ends: list[int]
    tok_starts: list[int]  # sorted char start of every token of `text`

    @classmethod
    def from_text(cls, tokenizer, text: str, tok_starts: list[int] | None = None) -> Stream:
        starts, ends = [], []
        for m in re.finditer(r"\S+", text):
            starts.append(m.start())
            ends.append(m.end())
        if tok_starts is None:
            tok_starts = [a for a, _ in encode_offsets(tokenizer, text)[1]]
        return cls(text, starts, ends, sorted(tok_starts))

    @property
    def n_words(self) -> int:
        return len(self.word_starts)

    def tokens(self, first: int, count: int) -> int:
        """Estimated tokens of words [first, first + count)."""
        if count <= 0:
            return 0
        a, b = self.word_starts[first], self.word_ends[first + count - 1]
        return bisect.bisect_left(self.tok_starts, b) - bisect.bisect_left(self.tok_starts, a)

    def fit(self, first: int, budget: int) -> int:
        """The most words from `first` on whose estimated token count is <= budget."""
        if budget <= 0 or first >= self.n_words:
            return 0
        base = bisect.bisect_left(self.tok_starts, self.word_starts[first])
        limit = self.tok_starts[base + budget] if base + budget < len(self.tok_starts) else math.inf
        # words whose end <= limit have at most `budget` tokens starting before their end
        return max(0, bisect.bisect_right(self.word_ends, limit, lo=first) - first)

    def gap(self, word: int) -> str:
        """Whitespace before word `word` (> 0)."""
        return self.text[self.word_ends[word - 1]:self.word_starts[word]]


@dataclass
class Haystack:
    """Filler: one periodic stream; every haystack piece starts at its beginning (as Landmark's do).
    Corpus: one stream of real text; sample i starts at `sample_starts[i]` and its pieces continue it."""

    kind: str
    stream: Stream
    sample_starts: list[int] = field(default_factory=lambda: [0])

    def start(self, sample: int) -> int:
        if self.kind == "filler":
            return 0
        if sample >= len(self.sample_starts):
            raise RuntimeError(f"the corpus has haystack text for only {len(self.sample_starts)} samples")
        return self.sample_starts[sample]


def filler_haystack(tokenizer, tokens: int) -> Haystack:
    """The Landmark filler repeated (space-joined) to at least `tokens` tokens (+ a margin)."""
    per_copy = max(1, len(encode(tokenizer, FILLER + " " + FILLER)) // 2)
    copies = tokens // per_copy + 4
    return Haystack("filler", Stream.from_text(tokenizer, " ".join([FILLER] * copies)))


def corpus_haystack(tokenizer, source: str, tokens: int, samples: int) -> Haystack:
    """Real text of a corpus source (documents in order, blank-line separated): sample i reads tokens
    [i*tokens, (i+1)*tokens) of the stream (snapped to a word start). Fewer samples when it runs out."""
    from harness.data.corpus import iter_documents

    need = samples * tokens + tokens // 20 + 64
    parts: list[str] = []
    tok_starts: list[int] = []
    offset = 0
    for _, text in iter_documents(source):
        if not text.strip():
            continue
        _, spans = encode_offsets(tokenizer, text)
        tok_starts.extend(offset + a for a, _ in spans)
        parts.append(text)
        offset += len(text) + 2
        if len(tok_starts) >= need:
            break
    stream = Stream.from_text(tokenizer, "\n\n".join(parts), tok_starts)
    starts = []
    for i in range(samples):
        if (i + 1) * tokens + 16 > len(stream.tok_starts):
            break
        char = stream.tok_starts[i * tokens]
        starts.append(min(bisect.bisect_left(stream.word_starts, char), max(0, stream.n_words - 1)))
    if not starts:
        raise InputError(f"corpus {source!r} has fewer than {tokens} tokens of text for a passkey haystack: "
                         "use a larger --corpus, shorter --lengths, or --haystack filler")
    return Haystack("corpus", stream, starts)
