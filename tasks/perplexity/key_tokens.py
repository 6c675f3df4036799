"""Key tokens of LongPPL (Fang et al., ICLR 2025): the tokens whose prediction needs long context.

An evaluator scores each token of a sample twice: with its full preceding context and with only the K
preceding tokens (target windows of W = K/4 tokens share one short context, the paper's 1024 : 4096; BOS
is kept in front of the short context when the run uses one, so the contrast is distance alone, not a
missing attention sink). Token i (i >= K) is key when loss_short - loss_full > alpha and loss_full < beta.
Key tokens are kept as character spans of the sample's text, so they transfer to an evaluated model with
another tokenizer: its token is key when its span overlaps a key span. Spans are computed once per
(evaluator, sample, parameters) and cached in the run folder (`key_tokens*.jsonl`), so every setting of a
shared evaluator reuses them. All scoring goes through the engine's token_nll (no [T, vocab] logits).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import InputError, one_line

# Zoo-scale defaults (README, "What is measured"): the zoo trains at T_train = 256, so the paper's K = 4096
# would exceed every length that works; K = 128 keeps the short pass (K + K/4 = 160 tokens) inside the
# training window, so the short loss is one the model computes reliably, and leaves room for K < L.
DEFAULT_CONTEXT = 128
DEFAULT_ALPHA = 2.0  # nats, as in the paper
DEFAULT_BETA = 2.0  # nats: the paper's log-prob > -2
WINDOW_RATIO = 4  # target window W = K // 4 (the paper: 1024 targets per 4096-token context)
OPTION_NAMES = ("key_tokens", "key_context", "key_alpha", "key_beta")
SIDE_STEM = "key_tokens"


@dataclass(frozen=True)
class KeySettings:
    """The resolved key-token options (None of them given: no key tokens at all)."""

    evaluator: str  # "self" or a model path / hub id / zoo:NAME
    context: int
    alpha: float
    beta: float

    @property
    def window(self) -> int:
        return max(1, self.context // WINDOW_RATIO)

    def identity(self) -> dict[str, Any]:
        return {"key_tokens": self.evaluator, "key_context": self.context, "key_alpha": self.alpha,
                "key_beta": self.beta}

    def record(self) -> dict[str, Any]:
        return {"key_evaluator": self.evaluator, "key_context": self.context, "key_window": self.window,
                "key_alpha": self.alpha, "key_beta": self.beta}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def key_settings(options: dict[str, Any], lengths: Sequence[int]) -> KeySettings | None:
    """The options as KeySettings, checked (bad values: InputError naming the fix); None without
    --key-tokens."""
    evaluator = options.get("key_tokens")
    if evaluator is None:
        given = [n for n in OPTION_NAMES[1:] if options.get(n) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise InputError(f"{flag} needs --key-tokens: add --key-tokens self (or an evaluator model)")
        return None
    if not isinstance(evaluator, str) or not evaluator.strip():
        raise InputError(f"--key-tokens {evaluator!r}: pass self or an evaluator model (path, hub id, "
                         "zoo:NAME)")
    context = options.get("key_context")
    context = DEFAULT_CONTEXT if context is None else context
    longest = max(lengths)
    if not (isinstance(context, int) and not isinstance(context, bool) and context >= 1):
        raise InputError(f"--key-context must be a whole number of tokens >= 1 (got {context!r}): e.g. "
                         f"--key-context {DEFAULT_CONTEXT}")
    if context >= longest:
        raise InputError(f"--key-context {context} must be below the longest --lengths value {longest} (no "
                         f"token before position K is ever a key token): e.g. --key-context "
                         f"{max(1, longest // 4)}")
    alpha = options.get("key_alpha")
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    if not (_number(alpha) and alpha >= 0):
        raise InputError(f"--key-alpha must be a number of nats >= 0 (got {alpha!r}): the loss gain from "
                         f"long context that makes a token key, e.g. --key-alpha {DEFAULT_ALPHA:g}")
    beta = options.get("key_beta")
    beta = DEFAULT_BETA if beta is None else beta
    if not (_number(beta) and beta > 0):
        raise InputError(f"--key-beta must be a number of nats > 0 (got {beta!r}): the largest full-context "
                         f"loss of a key token, e.g. --key-beta {DEFAULT_BETA:g}")
    return KeySettings(evaluator.strip(), context, float(alpha), float(beta))


# ------------------------------------------------------------------------------------- sample texts


@dataclass(frozen=True)
class SampleText:
    """A sample's text and each of its tokens' character span in it (the evaluated model's tokenizer)."""

    text: str
    offsets: list[tuple[int, int]]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def char_offsets(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character spans of `text` (no special tokens); needs a fast tokenizer."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as exc:
        raise InputError(f"--key-tokens needs a fast tokenizer with character offsets "
                         f"({one_line(exc, 120)}): use a model with a tokenizer.json") from None
    return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def sample_texts(tokenizer, documents, samples) -> list[SampleText]:
    """Each sample's character range of its document, found by re-tokenising the documents with offsets.

    `documents` yields (doc_id, text) in corpus order (harness.data.corpus.iter_documents)."""
    needed = {s.doc_id for s in samples}
    texts: dict[str, str] = {}
    for doc_id, text in documents:
        if doc_id in needed:
            texts[doc_id] = text
            if len(texts) == len(needed):
                break
    out, encoded = [], {}
    for s in samples:
        if s.doc_id not in encoded:
            encoded[s.doc_id] = char_offsets(tokenizer, texts[s.doc_id])
        ids, offsets = encoded[s.doc_id]
        if ids[s.offset:s.offset + len(s.tokens)] != s.tokens:
            raise InputError(f"document {s.doc_id!r} tokenises differently with offsets: --key-tokens cannot "
                             "map its tokens to characters; use another --corpus")
        own = offsets[s.offset:s.offset + len(s.tokens)]
        start, end = own[0][0], max(b for _, b in own)
        out.append(SampleText(texts[s.doc_id][start:end], [(a - start, b - start) for a, b in own]))
    return out


# ------------------------------------------------------------------------------------------ selection


def contrast_losses(token_nll: Callable[[list[int]], Any], tokens: Sequence[int], bos: int | None,
                    context: int, window: int, full: Any = None) -> tuple[list[float], list[float | None]]:
    """(full-context loss, short-context loss or None) of every token of `tokens`, via `token_nll`.

    Token i sees tokens[:i] (after BOS) in the full pass; for i >= K in the window [s, s + W) it sees
    tokens[s - K : i] (after BOS) in the short pass. `full`: the full pass's token_nll when already done."""
    head = [] if bos is None else [bos]
    b = len(head)
    if full is None:
        full = token_nll(head + list(tokens))
    full_loss = [math.nan] * (1 - b) + [float(x) for x in full[:len(tokens) - 1 + b]]
    short: list[float | None] = [None] * len(tokens)
    for s in range(context, len(tokens), window):
        end = min(s + window, len(tokens))
        nll = token_nll(head + list(tokens[s - context:end]))
        for i in range(s, end):
            short[i] = float(nll[b + i - (s - context) - 1])
    return full_loss, short


def select(full: Sequence[float], short: Sequence[float | None], alpha: float, beta: float) -> list[int]:
    """Indices of the key tokens: loss_short - loss_full > alpha and loss_full < beta."""
    return [i for i, (f, s) in enumerate(zip(full, short, strict=True))
            if s is not None and s - f > alpha and f < beta]


def merge_spans(spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Sorted, merged non-empty character spans (touching spans join)."""
    merged: list[list[int]] = []
    for a, b in sorted((a, b) for a, b in spans if b > a):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def key_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[Sequence[int]]) -> list[bool]:
    """Per token: does its character span overlap a key span (merged, sorted)?"""
    starts = [a for a, _ in spans]
    mask = []
    for a, b in offsets:
        k = bisect.bisect_left(starts, b) - 1  # the last key span starting before the token ends
        mask.append(b > a and k >= 0 and spans[k][1] > a)
    return mask


# -------------------------------------------------------------------------------------------- cache


@dataclass
class Evaluator:
    """Who picks the key tokens: the evaluated model ('self') or a separately loaded model."""

    name: str
    identity: str = ""  # a foreign model's fingerprint for the cache key ('self': the setting's, per setting)
    tokenizer: Any = None


@dataclass
class KeyState:
    """Per setting: the settings, the evaluator, and the spans cache (lazily read from the run folder)."""

    settings: KeySettings
    evaluator: Evaluator
    texts: list[SampleText]
    cache: dict[str, list[list[int]]] | None = None


def cache_key(identity: str, settings: KeySettings, bos: bool, digest: str) -> str:
    payload = json.dumps([identity, settings.context, settings.window, settings.alpha, settings.beta, bos,
                          digest])
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def read_cache(run_dir: Path | None) -> dict[str, list[list[int]]]:
    """Spans by cache key from `<run>/key_tokens*.jsonl` (lenient: a torn line is recomputed)."""
    from harness.data.jsonl import lenient_objects

    found: dict[str, list[list[int]]] = {}
    if run_dir is None or not Path(run_dir).is_dir():
        return found
    for path in sorted(Path(run_dir).glob(f"{SIDE_STEM}*.jsonl")):
        for row in lenient_objects(path):
            if isinstance(row.get("key"), str) and isinstance(row.get("spans"), list):
                found.setdefault(row["key"], row["spans"])
    return found


def foreign_evaluator(name: str, pre) -> Evaluator:
    """An evaluator model named by --key-tokens: its tokenizer and fingerprint now (no weights: preflight,
    through the run plan's `describe_model`)."""
    if pre.describe_model is None:
        raise InputError(f"--key-tokens {name!r} needs a run to read that model: pass --key-tokens self here")
    try:
        tokenizer, fingerprint = pre.describe_model(name)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load the tokenizer of --key-tokens {name!r} ({one_line(exc, 120)}): pass a "
                         "model folder with a tokenizer, or --key-tokens self") from None
    char_offsets(tokenizer, "probe")  # a slow tokenizer fails here, before anything runs
    return Evaluator(name, fingerprint, tokenizer)


def compute_spans(engine, tokenizer, text: SampleText, settings: KeySettings, bos: bool,
                  own_tokens: Sequence[int] | None = None, full: Any = None) -> list[list[int]]:
    """The key spans of one sample: the evaluator's own tokens (`own_tokens` with the sample's offsets for
    'self'), the two passes, the selection, the key tokens' character spans merged."""
    if own_tokens is None:
        tokens, offsets = char_offsets(tokenizer, text.text)
    else:
        tokens, offsets = list(own_tokens), text.offsets
    bos_id = tokenizer.bos_token_id if bos else None
    full_loss, short = contrast_losses(lambda ids: engine.token_nll_batch([ids])[0], tokens, bos_id,
                                       settings.context, settings.window, full)
    keys = select(full_loss, short, settings.alpha, settings.beta)
    return merge_spans([offsets[i] for i in keys])
