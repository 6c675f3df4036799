"""The passkey prompt of exactly L tokens: needles, the frame around the haystack, and the layout solver.

The haystack is assembled by counting tokens (one tokenisation of the stream gives the token count of any
word range), the whole text is then re-tokenised and corrected: words are added or removed at the
haystack's end, and a gap smaller than a word is closed with extra spaces between the last words (newlines
when spaces do not add tokens). A decode / re-encode round trip checks the result.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

from harness.core.errors import InputError
from tasks.generation import answer_tokens, encode, prompt_wrap
from tasks.passkey.haystack import Haystack, corpus_haystack, encode_offsets, filler_haystack
from tasks.passkey.options import NAMES, Options

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. "
               "Find it and memorize them. "
               "I will quiz you about the important information there.")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key?"
ANSWER_PREFIX = "The pass key is"
# multi-key variant: every needle is named, the question names the one asked for
NAMED_NEEDLE = "The pass key of {name} is {key}. Remember it. {key} is the pass key of {name}."
NAMED_QUESTION = "What is the pass key of {name}?"
NAMED_ANSWER_PREFIX = "The pass key of {name} is"

_MAX_EVALS = 40  # full re-tokenisations allowed to reach exactly L tokens
_MAX_GAP_PADS = 64


@dataclass(frozen=True)
class NeedleSpec:
    name: str | None
    key: str
    depth: float
    queried: bool


@dataclass
class PasskeyPrompt:
    """One passkey prompt of exactly `length` tokens and everything needed to score it."""

    text: str  # the prompt's text (without a prepended BOS)
    ids: list[int]  # what the model sees: exactly `length` tokens, BOS included when used
    length: int
    key: str
    name: str | None
    needles: list[NeedleSpec]
    needle_position: int  # token index (in ids) of the queried needle's first token
    needle_depth: float  # haystack tokens before that needle / haystack tokens
    haystack_tokens: int
    fixed_tokens: int  # tokens of the prompt with an empty haystack (BOS included): the minimum L
    segments: list[str]  # the haystack pieces as rendered (pads included)
    pad: int  # extra whitespace characters that closed the last sub-word gap
    answer_ids: list[int]
    answer_in_context: bool  # False when " K" could not be tokenised as a continuation of the prompt
    roundtrip: bool  # encode(decode(ids)) == ids


def make_needles(seed: int, sample: int, length: int, depth: float, options: Options) -> list[NeedleSpec]:
    """Seeded keys (and, with several needles, names and extra depths); the first one is queried."""
    rng = random.Random(f"passkey|{seed}|{sample}|{length}|{depth:.9g}")
    lo, hi = 10 ** (options.key_digits - 1), 10 ** options.key_digits
    keys: list[str] = []
    while len(keys) < options.needles:
        key = str(rng.randrange(lo if options.key_digits > 1 else 1, hi))
        if key not in keys or hi - lo < options.needles:
            keys.append(key)
    if options.needles == 1:
        return [NeedleSpec(None, keys[0], depth, True)]
    names = rng.sample(NAMES, options.needles)
    extra = [rng.random() for _ in range(options.needles - 1)]
    return [NeedleSpec(names[0], keys[0], depth, True)] + [
        NeedleSpec(n, k, d, False) for n, k, d in zip(names[1:], keys[1:], extra, strict=True)]


@dataclass(frozen=True)
class _Frame:
    """The fixed parts around the haystack pieces: head, needles in order of depth, tail."""

    head: str
    needles: tuple[str, ...]
    tail: str
    prepend_bos: bool


def _frame(tokenizer, needles: list[NeedleSpec], options: Options, bos: bool) -> _Frame:
    queried = needles[0]
    if queried.name is None:
        question, answer_prefix = QUESTION, ANSWER_PREFIX
    else:
        question = NAMED_QUESTION.format(name=queried.name)
        answer_prefix = NAMED_ANSWER_PREFIX.format(name=queried.name)
    texts = tuple((NEEDLE if n.name is None else NAMED_NEEDLE).format(key=n.key, name=n.name)
                  for n in sorted(needles, key=lambda n: (n.depth, not n.queried)))
    wrap = prompt_wrap(tokenizer, bos, options.chat_template)
    # chat: the answer prefix starts the assistant turn; plain: it follows the question on its line
    return _Frame(wrap.pre + INSTRUCTION + "\n", texts, "\n" + question + (wrap.post if wrap.chat else " ")
                  + answer_prefix, bool(wrap.bos))


def _token_at(spans: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the first token that ends after `char` (the token holding it, or the next one)."""
    ends = [e for _, e in spans]
    return bisect.bisect_right(ends, char)


class _Layout:
    """Haystack pieces as word ranges of the stream + pad; renders the whole prompt text."""

    def __init__(self, frame: _Frame, haystack: Haystack, sample: int, counts: list[int]):
        self.frame, self.haystack, self.sample = frame, haystack, sample
        self.counts = counts
        self.pad_char, self.pad = " ", 0

    def starts(self) -> list[int]:
        stream, starts = self.haystack.stream, []
        nxt = self.haystack.start(self.sample)
        for c in self.counts:
            first = 0 if self.haystack.kind == "filler" else nxt
            starts.append(first)
            nxt = first + c
        if nxt > stream.n_words:
            raise RuntimeError("the haystack stream is too short for this length (internal sizing error)")
        return starts

    def adjustable(self) -> int:
        """The piece that absorbs corrections: the last non-empty one (all later pieces are empty)."""
        for i in range(len(self.counts) - 1, -1, -1):
            if self.counts[i] > 0:
                return i
        return len(self.counts) - 1

    def _gaps(self, starts: list[int], adj: int) -> list[tuple[int, int]]:
        """(piece, word) pairs: a pad character goes before that word. Single-space gaps first (one
        extra space there adds one token in byte-level and SentencePiece-style tokenizers), from the
        end of the adjustable piece backwards, then earlier pieces."""
        stream = self.haystack.stream
        single: list[tuple[int, int]] = []
        other: list[tuple[int, int]] = []
        for i in range(adj, -1, -1):
            for w in range(starts[i] + self.counts[i] - 1, starts[i], -1):
                (single if stream.gap(w) == " " else other).append((i, w))
                if len(single) >= self.pad or len(single) + len(other) >= 4 * _MAX_GAP_PADS:
                    return (single + other)[:self.pad]
        return (single + other)[:self.pad]

    def render(self) -> tuple[str, list[str], list[int]]:
        """(prompt text, haystack pieces, char start of each needle)."""
        stream = self.haystack.stream
        starts = self.starts()
        adj = self.adjustable()
        inserts: dict[int, set[int]] = {}
        end_pad = 0
        if self.pad:
            gaps = self._gaps(starts, adj)[:_MAX_GAP_PADS]
            for piece, word in gaps:
                inserts.setdefault(piece, set()).add(word)
            end_pad = self.pad - len(gaps)
        pieces = []
        for i, (first, count) in enumerate(zip(starts, self.counts, strict=True)):
            out, pos = [], stream.word_starts[first] if count else 0
            if count:
                for w in sorted(inserts.get(i, ())):
                    out += [stream.text[pos:stream.word_starts[w]], self.pad_char]
                    pos = stream.word_starts[w]
                out.append(stream.text[pos:stream.word_ends[first + count - 1]])
            if i == adj and end_pad:
                out.append(self.pad_char * end_pad)
            pieces.append("".join(out))
        parts, needle_chars, pos = [self.frame.head], [], len(self.frame.head)
        for i, needle in enumerate(self.frame.needles):
            parts += [pieces[i], "\n"]
            pos += len(pieces[i]) + 1
            needle_chars.append(pos)
            parts += [needle, "\n"]
            pos += len(needle) + 1
        parts += [pieces[-1], self.frame.tail]
        return "".join(parts), pieces, needle_chars


def fixed_tokens(tokenizer, needles: list[NeedleSpec], options: Options, bos: bool,
                 haystack: Haystack) -> int:
    """Tokens of the prompt with an empty haystack, BOS included: the least L for these needles."""
    frame = _frame(tokenizer, needles, options, bos)
    text = _Layout(frame, haystack, 0, [0] * (len(frame.needles) + 1)).render()[0]
    return len(encode(tokenizer, text)) + (1 if frame.prepend_bos else 0)


def build_prompt(tokenizer, length: int, depth: float, sample: int = 0, *, seed: int = 0, bos: bool = True,
                 options: Options | None = None, haystack: Haystack | None = None) -> PasskeyPrompt:
    """The passkey prompt of exactly `length` tokens for one cell (see the module docstring).

    Raises InputError when `length` is below the fixed parts (naming the minimum) and RuntimeError when
    this tokenizer admits no exact prompt at this length (never seen with byte-level or BPE tokenizers).
    """
    if options is None:
        options = Options()
    needles = make_needles(seed, sample, length, depth, options)
    frame = _frame(tokenizer, needles, options, bos)
    b = 1 if frame.prepend_bos else 0
    target = length - b
    if haystack is None:
        haystack = filler_haystack(tokenizer, length) if options.haystack == "filler" else \
            corpus_haystack(tokenizer, "stdlib", length, sample + 1)
    n_pieces = len(frame.needles) + 1
    layout = _Layout(frame, haystack, sample, [0] * n_pieces)
    empty_text, _, empty_needles = layout.render()
    empty_ids, empty_spans = encode_offsets(tokenizer, empty_text)
    fixed = len(empty_ids)
    if fixed > target:
        raise InputError(f"length {length} is below the passkey prompt's fixed parts "
                         "(instruction, needle, question"
                         f"{', BOS' if b else ''}): "
                         f"use --lengths of at least {fixed + b} tokens for this tokenizer")
    hay = target - fixed
    _fill(layout, needles, hay)
    text = _solve(tokenizer, layout, target, length)
    ids, spans = encode_offsets(tokenizer, text)
    assert len(ids) == target, (len(ids), target)
    text, pieces, needle_chars = layout.render()
    order = sorted(needles, key=lambda n: (n.depth, not n.queried))
    q = next(i for i, n in enumerate(order) if n.queried)
    position = _token_at(spans, needle_chars[q])
    before = position - _token_at(empty_spans, empty_needles[q])
    full_ids = ([tokenizer.bos_token_id] if b else []) + ids
    answer, in_context = answer_tokens(tokenizer, text, ids, needles[0].key)
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    roundtrip = encode(tokenizer, decoded) == ids
    return PasskeyPrompt(text, full_ids, length, needles[0].key, needles[0].name, needles, position + b,
                  before / hay if hay else depth, hay, fixed + b, pieces, layout.pad, answer, in_context,
                  roundtrip)


def _fill(layout: _Layout, needles: list[NeedleSpec], hay: int) -> None:
    """Word counts per piece so that cumulative haystack tokens stay <= round(depth x H) at each needle."""
    depths = sorted(n.depth for n in needles)
    bounds = [round(d * hay) for d in depths] + [hay]
    stream, used = layout.haystack.stream, 0
    nxt = layout.haystack.start(layout.sample)
    for i, bound in enumerate(bounds):
        first = 0 if layout.haystack.kind == "filler" else nxt
        count = stream.fit(first, bound - used)
        if first + count >= stream.n_words and bound - used > stream.tokens(first, count):
            raise RuntimeError("the haystack stream is too short for this length (internal sizing error)")
        layout.counts[i] = count
        used += stream.tokens(first, count)
        nxt = first + count


def _solve(tokenizer, layout: _Layout, target: int, length: int) -> str:
    """Correct the estimated layout until the text is exactly `target` tokens; returns the text."""
    stream = layout.haystack.stream
    evals = 0
    seen: dict[tuple[int, ...], int] = {}

    def count() -> tuple[int, str]:
        nonlocal evals
        evals += 1
        text = layout.render()[0]
        return len(encode(tokenizer, text)), text

    while evals < _MAX_EVALS:
        layout.pad = 0
        n, text = count()
        seen[tuple(layout.counts)] = n
        if n == target:
            return text
        adj = layout.adjustable()
        first = layout.starts()[adj]
        have = layout.counts[adj]
        if n > target:  # too long: drop words from the end of the adjustable piece
            if have == 0:
                break
            drop = 1
            while drop < have and stream.tokens(first + have - drop, drop) < n - target:
                drop += 1
            layout.counts[adj] = have - drop
            continue
        more = stream.fit(first + have, target - n)
        grown = (*layout.counts[:adj], have + more, *layout.counts[adj + 1:])
        if more and grown not in seen:
            layout.counts[adj] = have + more
            continue
        # short by less than a word: close the gap with whitespace between the last words
        for char in (" ", "\n"):
            layout.pad_char, pad, tried = char, target - n, {}
            while evals < _MAX_EVALS and pad > 0 and pad not in tried:
                layout.pad = pad
                m, text = count()
                if m == target:
                    return text
                tried[pad] = m
                pad += target - m
            layout.pad_char = " "
        layout.pad = 0
        if have == 0:
            break
        layout.counts[adj] = have - 1  # another residual may be closable
    raise RuntimeError(f"could not build a passkey prompt of exactly {length} tokens with this tokenizer "
                       "(whitespace never closes the last gap): try a slightly different length")
