"""Passkey retrieval (the Landmark-attention format) on a length x depth grid, with two scores per cell.

Prompt (DESIGN.md), lines joined by newlines as in Landmark attention:
    <instruction> \\n <filler ...> \\n <needle> \\n <filler ...> \\n What is the pass key? The pass key is
- exact length: the prompt is exactly L tokens of the model's own tokenizer, BOS included when used. The
  haystack is assembled by counting tokens (one tokenisation of a long filler / corpus stream gives the
  token count of any word range), the whole text is then re-tokenised and corrected: words are added or
  removed at the haystack's end, and a gap smaller than a word is closed with extra spaces between the
  last words (newlines when spaces do not add tokens). A decode / re-encode round trip checks the result.
- depth: the needle starts after round(depth x H) of the H haystack tokens, never mid-word (haystack
  pieces end at word boundaries): early by less than one word (late by the pad spaces at depth 1).
- keys: `key_digits` digits drawn from (seed, sample, length, depth): a rerun builds identical prompts.
- variants: `haystack = "corpus"` uses real text of the run's --corpus (sample i reads its own stretch of
  the corpus); `needles = N` hides N keys with different names at seeded extra depths and asks for one;
  `chat_template` wraps instruction, haystack and question as a user turn and starts the answer
  ("The pass key is") in the assistant turn; base models (the default) get the plain prompt.
Scores: greedy generation after chunked prefill, exact match of the first integer in up to
`max_new_tokens` new tokens (`correct`, `generated`); and `answer_logprob` / `answer_rank` of the
continuation " K" tokenised in context (sum of log-probs, worst 1-based rank over its tokens).
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import InputError
from harness.report_passkey import FIGURES, MEASURE, MEASURES  # noqa: F401  (the report reads them here)
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

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
               "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key?"
ANSWER_PREFIX = "The pass key is"
# multi-key variant: every needle is named, the question names the one asked for
NAMED_NEEDLE = "The pass key of {name} is {key}. Remember it. {key} is the pass key of {name}."
NAMED_QUESTION = "What is the pass key of {name}?"
NAMED_ANSWER_PREFIX = "The pass key of {name} is"
NAMES = ("Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliett", "Kilo",
         "Lima", "Mike", "November", "Oscar", "Papa", "Quebec", "Romeo", "Sierra", "Tango", "Uniform", "Victor",
         "Whiskey", "Xray", "Yankee", "Zulu")

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_KEY_DIGITS = 5
HAYSTACKS = ("filler", "corpus")
_MAX_EVALS = 40  # full re-tokenisations allowed to reach exactly L tokens
_MAX_GAP_PADS = 64


# ================================================================================================ options


@dataclass(frozen=True)
class Options:
    """The task's options with defaults applied (None in TaskParams.options = the user gave nothing)."""

    depths: tuple[float, ...] = DEFAULT_DEPTHS
    key_digits: int = DEFAULT_KEY_DIGITS
    haystack: str = "filler"
    needles: int = 1
    chat_template: bool = False
    max_new_tokens: int = DEFAULT_KEY_DIGITS + 4

    @classmethod
    def from_params(cls, params: TaskParams) -> Options:
        o = params.options or {}
        depths = tuple(parse_depths(o.get("depths")) or DEFAULT_DEPTHS)
        digits = int_option(o, "key_digits", "--key-digits", DEFAULT_KEY_DIGITS, 1, 64)
        haystack = o.get("haystack") or "filler"
        if haystack not in HAYSTACKS:
            raise InputError(f"--haystack {haystack!r} is unknown: use --haystack filler or --haystack corpus")
        needles = int_option(o, "needles", "--needles", 1, 1, len(NAMES))
        chat = bool(o.get("chat_template") or False)
        new_tokens = int_option(o, "max_new_tokens", "--max-new-tokens", 32 if chat else digits + 4, 1, 4096)
        return cls(depths, digits, haystack, needles, chat, new_tokens)


# ================================================================================================ haystack


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
            tok_starts = [a for a, _ in _encode(tokenizer, text, offsets=True)[1]]
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
    per_copy = max(1, len(_encode(tokenizer, FILLER + " " + FILLER)[0]) // 2)
    copies = tokens // per_copy + 4
    return Haystack("filler", Stream.from_text(tokenizer, " ".join([FILLER] * copies)))


def corpus_haystack(tokenizer, source: str, tokens: int, samples: int) -> Haystack:
    """Real text of a corpus source (documents in order, blank-line separated): sample i reads tokens
    [i*tokens, (i+1)*tokens) of the stream (snapped to a word start). Fewer samples when it runs out."""
    from harness.corpus import iter_documents

    need = samples * tokens + tokens // 20 + 64
    parts: list[str] = []
    tok_starts: list[int] = []
    offset = 0
    for _, text in iter_documents(source):
        if not text.strip():
            continue
        _, spans = _encode(tokenizer, text, offsets=True)
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


# ================================================================================================ prompt


@dataclass(frozen=True)
class NeedleSpec:
    name: str | None
    key: str
    depth: float
    queried: bool


@dataclass
class Prompt:
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
    has_bos = bos and tokenizer.bos_token_id is not None
    if not options.chat_template:
        return _Frame(INSTRUCTION + "\n", texts, "\n" + question + " " + answer_prefix, has_bos)
    pre, post = chat_wrapper(tokenizer)
    bos_text = tokenizer.bos_token or ""
    prepend = has_bos
    if bos_text and pre.startswith(bos_text):  # the template writes BOS itself: never a double BOS
        prepend = False
        if not bos:
            pre = pre[len(bos_text):]
    return _Frame(pre + INSTRUCTION + "\n", texts, "\n" + question + post + answer_prefix, prepend)


def _encode(tokenizer, text: str, offsets: bool = False):
    """(ids, char spans or None) of `text` without special tokens; no too-long warnings."""
    if offsets and getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return list(enc["input_ids"]), [tuple(s) for s in enc["offset_mapping"]]
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    if not offsets:
        return ids, None
    spans, pos = [], 0  # slow tokenizer: approximate spans by decoding prefixes (only small texts here)
    for i in range(len(ids)):
        end = len(tokenizer.decode(ids[:i + 1], clean_up_tokenization_spaces=False))
        spans.append((pos, end))
        pos = end
    return ids, spans


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


def build_prompt(tokenizer, length: int, depth: float, sample: int = 0, *, seed: int = 0, bos: bool = True,
                 options: Options | None = None, haystack: Haystack | None = None) -> Prompt:
    """The passkey prompt of exactly `length` tokens for one cell (see the module docstring).

    Raises InputError when `length` is below the fixed parts (naming the minimum) and RuntimeError when
    this tokenizer admits no exact prompt at this length (never seen with byte-level or BPE tokenizers).
    """
    options = options or Options()
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
    empty_ids, empty_spans = _encode(tokenizer, empty_text, offsets=True)
    fixed = len(empty_ids)
    if fixed > target:
        raise InputError(f"length {length} is below the passkey prompt's fixed parts (instruction, needle, question"
                         f"{', BOS' if b else ''}): use --lengths of at least {fixed + b} tokens for this tokenizer")
    hay = target - fixed
    _fill(layout, needles, hay)
    text = _solve(tokenizer, layout, target, length)
    ids, spans = _encode(tokenizer, text, offsets=True)
    assert len(ids) == target, (len(ids), target)
    text, pieces, needle_chars = layout.render()
    order = sorted(needles, key=lambda n: (n.depth, not n.queried))
    q = next(i for i, n in enumerate(order) if n.queried)
    position = _token_at(spans, needle_chars[q])
    before = position - _token_at(empty_spans, empty_needles[q])
    full_ids = ([tokenizer.bos_token_id] if b else []) + ids
    answer, in_context = answer_tokens(tokenizer, text, ids, needles[0].key)
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    roundtrip = _encode(tokenizer, decoded)[0] == ids
    return Prompt(text, full_ids, length, needles[0].key, needles[0].name, needles, position + b,
                  before / hay if hay else depth, hay, fixed + b, pieces, layout.pad, answer, in_context, roundtrip)


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
        return len(_encode(tokenizer, text)[0]), text

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


def answer_tokens(tokenizer, prompt_text: str, prompt_ids: list[int], key: str) -> tuple[list[int], bool]:
    """Tokens of the continuation " K" in context: tokenize(prompt + " " + K) minus the prompt's tokens.

    When the tokenizer merges across the prompt's end (the prompt's own tokens change), fall back to the
    tokens of " K" after the prompt's last word alone, then to " K" alone (in_context False)."""
    full = _encode(tokenizer, prompt_text + " " + key)[0]
    if full[:len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids):], True
    word = prompt_text.rsplit(None, 1)[-1]
    head, both = _encode(tokenizer, word)[0], _encode(tokenizer, word + " " + key)[0]
    if both[:len(head)] == head and len(both) > len(head):
        return both[len(head):], False
    return _encode(tokenizer, " " + key)[0], False




# ================================================================================================ task


class PasskeyTask(Task):
    name = "passkey"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--key-digits", type=int, default=None, metavar="N",
                            help=f"passkey: digits of each key (default {DEFAULT_KEY_DIGITS})")
        parser.add_argument("--haystack", choices=HAYSTACKS, default=None,
                            help="passkey: Landmark filler sentences (default) or real text from --corpus")
        parser.add_argument("--needles", type=int, default=None, metavar="N",
                            help="passkey: hide N named keys at seeded depths and ask for one (default 1)")

    @staticmethod
    def option_names() -> list[str]:
        return ["depths", "max_new_tokens", "chat_template", "key_digits", "haystack", "needles"]

    def identity(self, params: TaskParams) -> dict[str, Any]:
        # depths are cells, not identity: adding depths resumes; the corpus matters only for its haystack
        o = Options.from_params(params)
        ident = {"bos": params.bos, "haystack": o.haystack, "key_digits": o.key_digits, "needles": o.needles,
                 "chat_template": o.chat_template, "max_new_tokens": o.max_new_tokens}
        if o.haystack == "corpus":
            ident.update(corpus=params.corpus, max_length=max(params.lengths))  # sample i reads from i x max_length
        return ident

    def cells(self, params: TaskParams) -> list[Cell]:
        options = Options.from_params(params)
        return [Cell(length, depth, sample) for length in sorted(params.lengths) for depth in options.depths
                for sample in range(params.samples)]

    def prepare(self, ctx: RunContext) -> int | None:
        """Options, the haystack stream and the minimum-length check, before any model is loaded."""
        params, tokenizer = ctx.params, ctx.tokenizer
        options = Options.from_params(params)
        longest = max(params.lengths)
        if options.haystack == "filler":
            haystack = filler_haystack(tokenizer, longest)
        else:
            haystack = corpus_haystack(tokenizer, params.corpus, longest, params.samples)
        minimum = 0
        for cell in self.cells(params):
            needles = make_needles(params.seed, cell.sample, cell.length, cell.depth, options)
            frame = _frame(tokenizer, needles, options, params.bos)
            text = _Layout(frame, haystack, 0, [0] * (len(frame.needles) + 1)).render()[0]
            minimum = max(minimum, len(_encode(tokenizer, text)[0]) + (1 if frame.prepend_bos else 0))
        short = [length for length in params.lengths if length < minimum]
        if short:
            raise InputError(f"--lengths {','.join(map(str, short))} is below the passkey prompt's fixed parts "
                             f"(instruction, needles, question{', BOS' if params.bos else ''}): use --lengths of at "
                             f"least {minimum} tokens for this tokenizer")
        ctx.state["passkey"] = (options, haystack)
        available = len(haystack.sample_starts) if haystack.kind == "corpus" else None
        if available is not None and available < params.samples:
            ctx.warn(f"corpus {params.corpus!r} has haystack text for only {available} passkey samples of {longest} "
                     f"tokens (asked {params.samples}): running those")
            return available
        return None

    def _state(self, ctx: RunContext) -> tuple[Options, Haystack]:
        if "passkey" not in ctx.state:
            self.prepare(ctx)
        return ctx.state["passkey"]

    def build(self, ctx: RunContext, cell: Cell) -> Prompt:
        """The cell's prompt (seeded: the same cell always gets the same prompt)."""
        options, haystack = self._state(ctx)
        prompt = build_prompt(ctx.tokenizer, cell.length, cell.depth, cell.sample, seed=ctx.params.seed,
                              bos=ctx.params.bos, options=options, haystack=haystack)
        if not prompt.roundtrip:
            ctx.warn("passkey: decoding and re-encoding a prompt changes its tokens with this tokenizer; "
                     "the model sees the prompt's own tokenisation (exactly L tokens)")
        if not prompt.answer_in_context:
            ctx.warn("passkey: this tokenizer merges the answer into the prompt's last token; answer_logprob "
                     "scores ' K' tokenised after the last word alone")
        return prompt

    def score_group(self, ctx: RunContext, cells: list[Cell]) -> list[dict[str, Any]]:
        options, _ = self._state(ctx)
        out = []
        for cell in cells:
            prompt = self.build(ctx, cell)
            eos = ctx.tokenizer.eos_token_id
            new = ctx.engine.generate(prompt.ids, options.max_new_tokens, stop_ids=[eos] if eos is not None else [])
            generated = ctx.tokenizer.decode(new, skip_special_tokens=True)
            answer = first_integer(generated)
            score = ctx.engine.answer_score(prompt.ids, prompt.answer_ids)
            out.append({
                "key": prompt.key, "correct": answer == prompt.key, "generated": generated, "answer": answer,
                "answer_logprob": score.logprob, "answer_rank": score.rank, "answer_tokens": len(prompt.answer_ids),
                "chance_logprob": -options.key_digits * math.log(10.0), "needle_position": prompt.needle_position,
                "needle_depth": prompt.needle_depth, "haystack_tokens": prompt.haystack_tokens,
                "needles": options.needles, "needle_name": prompt.name, "haystack": options.haystack,
            })
        return out


TASK = PasskeyTask()
