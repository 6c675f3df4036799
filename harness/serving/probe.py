"""Checked, not trusted: a server's inv_freq cannot be read, so one probe compares what it serves with the
in-process model of the same weights.

The probe is a real-text prompt of `length` tokens; the server answers it greedily with `new` tokens and
their log-probs; the in-process model scores those same tokens teacher-forced, once with the setting's
override and, when the setting changes RoPE, once with the checkpoint's own RoPE. The served log-probs must
sit closer to the asked setting than to the unchanged checkpoint: that is the evidence the engine applied the
override; served log-probs more than 1 nat (mean) from every in-process variant come from other weights.
Measured on SmolLM2 at 1K (llama.cpp's quantised blocks vs the HF path's float32): mean |gap| 0.03
nats with the override the server was given, 0.11 against base x2 and 0.32 against base / 10.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.core.contract import Engine

PROBE_LENGTH = 1024  # tokens: far enough into the sequence that RoPE settings differ measurably
PROBE_NEW = 32  # generated tokens compared
CLEAR = 2.0  # the verdict needs one gap at least this many times the other
OTHER_MODEL = 1.0  # nats of mean gap to every in-process variant: the server runs other weights


@dataclass(frozen=True)
class Probe:
    """What one probe measured; `fields` is what every record of the setting carries."""

    verdict: str  # override (NOT) applied, inconclusive, no override, serves another model, skipped, failed
    length: int | None = None
    tokens: int | None = None  # generated tokens compared
    greedy_agree: int | None = None  # leading greedy tokens the server and the in-process model share
    gap: float | None = None  # mean |served - in-process| log-prob (nats), in-process with the override
    gap_max: float | None = None
    gap_without_override: float | None = None  # the same against the checkpoint's own RoPE

    @property
    def refuses(self) -> bool:
        return self.verdict in ("override NOT applied", "serves another model")

    def fields(self) -> dict[str, Any]:
        return {"probe_verdict": self.verdict, "probe_length": self.length, "probe_tokens": self.tokens,
                "probe_greedy_agree": self.greedy_agree, "probe_gap": self.gap, "probe_gap_max": self.gap_max,
                "probe_gap_without_override": self.gap_without_override}

    def describe(self) -> str:
        if self.gap is None:
            return f"probe {self.verdict}"
        other = (f", {self.gap_without_override:.3f} without the override"
                 if self.gap_without_override is not None else "")
        return (f"probe at {self.length} tokens: {self.verdict} (mean |log-prob gap| {self.gap:.3f} nats to "
                f"the in-process model{other}; greedy tokens agree {self.greedy_agree}/{self.tokens})")


def probe_ids(tokenizer: Any, length: int) -> list[int]:
    """`length` tokens of real text (the stdlib corpus: offline), after a BOS where the tokenizer adds one."""
    from harness.data.corpus import bos_ids, token_stream

    head = bos_ids(tokenizer)
    text = token_stream("stdlib", lambda t: tokenizer(t, add_special_tokens=False)["input_ids"], [],
                        length)
    return (head + text)[:length]


def fits_in_memory(config: Any, share: float = 0.5) -> str | None:
    """None when a float32 copy of the model fits in `share` of the free RAM, else why not (the probe's
    in-process model runs on CPU beside the server)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        need = 4 * AutoModelForCausalLM.from_config(config, dtype=torch.float32).num_parameters()
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > share * free:
        return f"a float32 copy needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB RAM free"
    return None


def _leading_agreement(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _gaps(served: Sequence[float], reference: Sequence[float]) -> list[float]:
    return [abs(float(s) - float(r)) for s, r in zip(served, reference, strict=False)]


def _score(engine: Engine, ids: list[int], tokens: list[int]) -> tuple[list[float], list[int]]:
    """In-process log-probs of the server's `tokens` after `ids` (teacher-forced) and its own greedy ids."""
    (score, generated), = engine.score_and_generate_batch([ids], [tokens], len(tokens)).values
    return [float(v) for v in score.token_logprobs], list(generated)


def judge(length: int, tokens: list[int], served: list[float], asked: list[float], generated: list[int],
          unchanged: list[float] | None) -> Probe:
    """The verdict: served log-probs nearer the asked setting than the unchanged checkpoint, by CLEAR."""
    gaps = _gaps(served, asked)
    gap = sum(gaps) / len(gaps)
    without = sum(_gaps(served, unchanged)) / len(gaps) if unchanged is not None else None
    verdict = ("serves another model" if min(gap, without if without is not None else gap) > OTHER_MODEL else
               "no override" if without is None else
               "override applied" if CLEAR * gap <= without else
               "override NOT applied" if CLEAR * without <= gap else "inconclusive")
    return Probe(verdict, length, len(tokens), _leading_agreement(tokens, generated), gap, max(gaps), without)


def aligned(served: dict[str, Any], piece: Callable[[int], str]) -> int:
    """How many generated tokens pair with their log-probs: all where the server returned the sampled ids,
    else the leading ones whose re-tokenised id spells the server's own text of that token."""
    n = min(len(served["ids"]), len(served["token_logprobs"] or []))
    if served["ids_exact"]:
        return n
    texts = served.get("token_texts") or []
    return next((i for i in range(min(n, len(texts))) if piece(served["ids"][i]) != texts[i]),
                min(n, len(texts)))


def run_probe(client: Any, ids: list[int], load: Callable[[bool], Engine], changes_rope: bool,
              new: int = PROBE_NEW) -> Probe:
    """Ask the server for `new` greedy tokens after `ids`, then score them in-process, one model at a time:
    `load(True)` the asked setting, `load(False)` the unchanged checkpoint (when the setting changes RoPE).
    The client's `decode` (the model's tokenizer) spells a token to pair a text-only server's tokens with
    their log-probs."""
    served = client.complete(ids, new, logprobs=1)
    n = aligned(served, lambda token: client.decode([token]))
    if n == 0:
        return Probe("failed: no generated token paired with its log-prob", len(ids))
    tokens, logprobs = served["ids"][:n], served["token_logprobs"][:n]
    asked, generated = _score(load(True), ids, tokens)
    unchanged = _score(load(False), ids, tokens)[0] if changes_rope else None
    return judge(len(ids), tokens, logprobs, asked, generated, unchanged)
