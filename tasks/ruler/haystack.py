"""RULER's haystacks as token streams with unit boundaries: noise lines, a natural-language text, needles.

A stream is one tokenisation of a long text made of units (a noise line, a sentence, a distractor needle)
joined by a separator; `bounds` are the token indices where a unit starts (a token starting exactly at the
unit's first character). Prompts take a prefix of the stream, so every length of a sample reads the same
haystack start (RULER's haystacks also start at the top), and needles go in at unit boundaries.

Texts: `noise` (RULER's repeated "The grass is green..." lines), `essay` (RULER reads Paul Graham's essays;
offline this is the public-domain novel shipped in harness/data/texts, see its README), and any corpus spec
of `harness.data.corpus` (a local file, folder, .jsonl or hf:NAME) given as `--haystack`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from harness.core.errors import InputError
from harness.data.corpus import BOOK_NAME, iter_documents
from tasks.passkey.haystack import encode_offsets

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_ABBREVIATIONS = {"Mr", "Mrs", "Ms", "Dr", "St", "Col", "Capt", "Esq", "Rev", "Sir", "Jr", "Sr", "vs", "No"}
_SENTENCE_END = re.compile(r"[.!?][\"'\u2019\u201d)]*(\s+)(?=[\"'\u2018\u201c(]*[A-Z0-9])")


@dataclass(frozen=True)
class Stream:
    """Token ids of a haystack text and the token indices where its units start (0 first)."""

    ids: tuple[int, ...]
    bounds: tuple[int, ...]
    name: str
    sep: str = "\n"  # what joins the units
    lead: bool = False  # the separator starts a unit's first token (" It") rather than ending the last

    def insert_text(self, text: str) -> str:
        """`text` as a unit of its own, put in at a boundary: with the separator on the stream's side."""
        return self.sep + text if self.lead else text + self.sep

    def boundary_near(self, target: int, limit: int) -> int:
        """The unit boundary <= limit nearest to `target` (ties: the earlier one)."""
        stop = bisect.bisect_right(self.bounds, limit)
        if stop == 0:
            return 0
        i = bisect.bisect_left(self.bounds, target, 0, stop)
        options = [self.bounds[j] for j in (i - 1, i) if 0 <= j < stop]
        return min(options, key=lambda b: (abs(b - target), b))


def build_stream(tokenizer, units: Callable[[int], list[str]], sep: str, need: int, name: str,
                 available: int | None = None) -> Stream:
    """Tokenise `units(n)` joined by `sep` with n grown until the text has at least `need` tokens.

    `available`: how many units exist at most (None: unbounded); a text with fewer tokens than `need`
    is an InputError naming the haystack."""
    n = 32 if available is None else min(32, available)
    while True:
        parts = units(n)
        text = sep.join(parts)
        ids, spans = encode_offsets(tokenizer, text)
        exhausted = available is not None and n >= available
        if len(ids) >= need or exhausted:
            break
        per_unit = max(len(ids), 1) / max(len(parts), 1)
        n = max(n + 1, int((need - len(ids)) / per_unit * 1.2) + n + 8)
        if available is not None:
            n = min(n, available)
    if len(ids) < need:
        raise InputError(f"the {name} haystack has {len(ids)} tokens, fewer than the {need} this length "
                         "needs: use shorter --lengths or a longer --haystack text")
    starts, char = [], 0
    for part in parts:
        starts.append(char)
        char += len(part) + len(sep)
    at: dict[int, int] = {}
    for i, (a, _) in enumerate(spans):
        at.setdefault(a, i)  # a character split over several tokens (bytes): its first token
    # the separator ends the previous token (lead False) or starts the unit's first token (lead True)
    plain = [at[c] for c in starts if c in at]
    led = [at[c - len(sep)] for c in starts[1:] if c not in at and c - len(sep) in at]
    lead = len(led) > len(plain) - 1
    bounds = sorted({0, *(led if lead else plain)})
    return Stream(tuple(ids), tuple(bounds), name, sep, lead)


def noise_stream(tokenizer, need: int) -> Stream:
    """RULER's noise haystack: the noise sentence block repeated, one per line."""
    return build_stream(tokenizer, lambda n: [NOISE] * n, "\n", need, "noise")


@lru_cache(maxsize=4)
def sentences(spec: str) -> tuple[str, ...]:
    """A haystack text as sentences (whitespace collapsed, as RULER does before splitting)."""
    try:
        return _split(text for _, text in iter_documents("book" if spec == "essay" else spec))
    except InputError as err:
        raise InputError(f"--haystack {spec!r}: {err} (or a haystack kind: noise, essay, needle)") from None


def _split(texts: Iterator[str]) -> tuple[str, ...]:
    sentences: list[str] = []
    for text in texts:
        flat = " ".join(text.split())
        start = 0
        for match in _SENTENCE_END.finditer(flat):  # split at the spaces after a sentence's end
            if flat[max(0, match.start() - 4):match.start()].split(" ")[-1] in _ABBREVIATIONS:
                continue
            sentences.append(flat[start:match.start(1)])
            start = match.end(1)
        sentences += [flat[start:]] if flat[start:] else []
    if not sentences:
        raise InputError("it has no text: pass a file with natural-language text")
    return tuple(sentences)


def text_stream(tokenizer, spec: str, need: int) -> Stream:
    """Natural-language haystack (the shipped book for `essay`, else a corpus spec), sentence units."""
    units = sentences(spec)
    name = BOOK_NAME if spec == "essay" else spec
    return build_stream(tokenizer, lambda n: list(units[:n]), " ", need, name, len(units))
