"""Perplexity vs context length (ppl@L, docs/design.md), per-position loss and key-token ppl_key@L.

One forward pass over the longest length yields every shorter L, because a causal model's prediction
at position t never sees later tokens; length-dependent RoPE (dynamic NTK, LongRoPE) gets one pass per
L with its frequencies fixed for that L (the engine does that). Per-position loss of the longest pass
goes to positions.jsonl in buckets: that curve shows the RoPE cliff directly. With --key-tokens, the same
pass also gives ppl_key@L over the LongPPL key tokens (key_tokens.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import tasks.perplexity.key_tokens as kt
from harness.core.errors import InputError
from harness.core.metrics import MeasureSpec, PositionMeasureSpec
from harness.data.corpus import Sample, bos_ids, iter_documents, make_samples
from tasks.base import Cell, Option, Preflight, Prepared, RunContext, Task, TaskParams, batch_groups

BUCKETS = 128  # per-position buckets over the longest length

MEASURE = MeasureSpec(
    metric="nll",
    name="ppl@L",
    transform="exp",
    factor=1.5,
    reference="tune_len",
    log_interp=True,
    chance_column="chance_nll",  # a uniform guess over the vocabulary: ln(vocab), ppl = vocab
    description="the model sees exactly L tokens (BOS + the sample's first L-1); ppl@L = exp(mean over "
                "samples "
                "of the per-sample mean NLL over the L-1 predictions)",
    id="ppl@L",
    console="ppl",
)

# ppl@L averages every position up to L, so it crosses any threshold well after the per-token loss has
# jumped (on the zoo's 256-token models by ~2x). This rule reads the jump off the per-position curve.
# delta = 0.5 nats (a per-token perplexity x1.65): on the zoo (12 samples, 64-token buckets) the smoothed mean
# curve strays at most ~0.25 nats from its [T/2, T] reference in distribution, while RoPE cliffs rise by
# 1.5-2 nats; with one or two samples the curve is noisier (one sample's smoothed loss strays ~0.4 nats).
POSITION_LOSS = PositionMeasureSpec(
    metric="nll",
    name="per-position loss",
    id="position-loss",
    delta=0.5,
    window=3,
    reference="tune_len",
    reference_from=0.5,
    chance_column="chance_nll",
    description="mean NLL (nats) of the predictions in each position bucket of the longest pass "
                "(positions.jsonl), "
                "token-weighted over samples: the loss at a token position, not averaged up to it",
)

# LongPPL's key tokens (Fang et al., ICLR 2025): the same rule as ppl@L on the loss of the tokens that need
# long context. Records carry nll_key only with --key-tokens; without it the report leaves this out quietly.
KEY_MEASURE = MeasureSpec(
    metric="nll_key",
    name="ppl_key@L",
    transform="exp",
    factor=1.5,
    reference="tune_len",
    log_interp=True,
    description="perplexity over the key tokens among the L-1 predictions (full context): exp(mean over "
                "samples of the per-sample mean NLL over them); key: an evaluator's loss with only the K "
                "preceding tokens exceeds its full-context loss by more than alpha while the latter stays "
                "below beta (LongPPL), transferred as character spans; a sample without key tokens below L "
                "has no value",
    id="ppl-key@L",
    console="ppl_key",
)

MEASURES = [MEASURE, POSITION_LOSS, KEY_MEASURE]


def _sliding_nll(ctx: RunContext, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """Press / HF sliding-window NLL over `ids`: windows of `window` tokens advancing by `stride`;
    each token is scored once, in the first window that reaches it, with up to window-stride context.
    Returns (total NLL, scored tokens): token-weighted."""
    total, count, scored_to = 0.0, 0, 1
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        nll = ctx.engine.token_nll_batch([ids[begin:end]])[0]  # predictions of ids[begin+1 : end]
        # stride > window leaves gaps (as in HF's loop): the window's every prediction is then fresh
        fresh = nll[max(0, scored_to - begin - 1):]
        total += float(fresh.double().sum())
        count += fresh.numel()
        scored_to = end
        if end == len(ids):
            break
    return total, count


@dataclass
class Samples:
    """The prepared state: the corpus samples of the longest length (every length reads their prefixes) and,
    with --key-tokens, the key-token state (evaluator, sample texts, spans cache)."""

    samples: list[Sample]
    key: kt.KeyState | None = None


class PerplexityTask(Task):
    name = "perplexity"
    needs_prompt_logprobs = True
    measures = tuple(MEASURES)

    options = (
        Option("sliding_stride", "perplexity: also report ppl_sliding@L,S (window L, stride S) over each "
               "sample", type=int, metavar="S"),
        Option("key_tokens", "perplexity: also report ppl_key@L over LongPPL key tokens picked by an "
               "evaluator: self (the evaluated model) or a model (path, hub id, zoo:NAME)",
               metavar="self|MODEL"),
        Option("key_context", f"perplexity, --key-tokens: the short context K in evaluator tokens (default "
               f"{kt.DEFAULT_CONTEXT}; below the longest length)", type=int, metavar="K"),
        Option("key_alpha", f"perplexity, --key-tokens: least loss gain from long context of a key token "
               f"(nats, default {kt.DEFAULT_ALPHA:g})", type=float, metavar="NATS"),
        Option("key_beta", f"perplexity, --key-tokens: largest full-context loss of a key token (nats, "
               f"default {kt.DEFAULT_BETA:g})", type=float, metavar="NATS"),
    )

    def identity(self, params: TaskParams) -> dict[str, Any]:
        # samples depend on the longest length (sample i = tokens [i*(M-b), (i+1)*(M-b)))
        identity = {**super().identity(params), "max_length": max(params.lengths)}
        for name in kt.OPTION_NAMES:  # absent without --key-tokens: earlier runs keep their cell keys
            identity.pop(name, None)
        settings = kt.key_settings(params.options, params.lengths)
        return identity if settings is None else {**identity, **settings.identity()}

    def cells(self, params: TaskParams) -> list[Cell]:
        return [Cell(length, None, sample) for sample in range(params.samples)
                for length in sorted(params.lengths)]

    def prepare(self, pre: Preflight) -> Prepared[Samples]:
        params = pre.params
        stride = params.options.get("sliding_stride")
        if stride is not None and (not isinstance(stride, int) or stride < 1):
            raise InputError(f"--sliding-stride must be a positive number of tokens (got {stride!r}): "
                             "e.g. 512")
        settings = kt.key_settings(params.options, params.lengths)
        evaluator = None
        if settings is not None:  # the evaluator's id is checked before any sample is built
            own = settings.evaluator == "self"
            evaluator = kt.Evaluator("self") if own else kt.foreign_evaluator(settings.evaluator, pre)
        samples = make_samples(pre.tokenizer, params.corpus, max(params.lengths), params.samples,
                               params.bos)
        if len(samples) < params.samples:
            pre.warn(f"corpus {params.corpus!r} yields only {len(samples)} samples of "
                     f"{max(params.lengths)} tokens "
                     f"(asked {params.samples}): running those")
        key = None
        if settings is not None:
            if own and min(params.lengths) <= settings.context:
                pre.warn(f"--key-context {settings.context}: no key token lies below L <= "
                         f"{settings.context}, so ppl_key is null there")
            texts = kt.sample_texts(pre.tokenizer, iter_documents(params.corpus), samples)
            key = kt.KeyState(settings, evaluator, texts)
        return Prepared(Samples(samples, key), len(samples))

    def samples_hash(self, state: Samples) -> list[str]:
        import hashlib

        return [hashlib.sha256(",".join(map(str, s.tokens)).encode()).hexdigest()[:16] for s in state.samples]

    def groups(self, ctx: RunContext, cells: list[Cell]) -> list[list[Cell]]:
        """Every length of a sample from one pass (length-dependent RoPE: one pass per length), and samples
        of one longest length batched as the engine allows."""
        dependent = ctx.engine is not None and ctx.engine.length_dependent
        return batch_groups(ctx.engine, _passes(cells, dependent))

    def passes(self, params: TaskParams, cells: list[Cell], length_dependent: bool) -> list[tuple[int, int]]:
        return [(max(c.length for c in unit), 0) for unit in _passes(cells, length_dependent)]

    def _ids(self, ctx: RunContext, sample: Sample) -> list[int]:
        return bos_ids(ctx.tokenizer, ctx.params.bos) + sample.tokens

    def score_group(self, ctx: RunContext, cells: list[Cell]) -> list[dict[str, Any]]:
        """The group's samples (one longest length) in shared forwards, then each sample's cells."""
        state = self.state_of(ctx)
        order = list(dict.fromkeys(c.sample for c in cells))
        longest = max(c.length for c in cells)
        ids = {index: self._ids(ctx, state.samples[index]) for index in order}
        scored = ctx.engine.token_nll_batch([ids[index][:longest] for index in order])
        results: dict[Cell, dict[str, Any]] = {}
        for index, nll, ran in zip(order, scored.values, scored.ran, strict=True):
            mine = [c for c in cells if c.sample == index]
            for cell, metrics in zip(mine, self._sample_metrics(ctx, index, ids[index], nll, mine),
                                     strict=True):
                results[cell] = {**metrics, "plan": ran.plan, "batch": ran.batch}
        return [results[c] for c in cells]

    def _sample_metrics(self, ctx: RunContext, index: int, ids: list[int], nll,
                        cells: list[Cell]) -> list[dict[str, Any]]:
        """Metrics of one sample's cells from its pass over the group's longest length (`nll`)."""
        sample = self.state_of(ctx).samples[index]
        longest = nll.numel() + 1
        if longest == max(ctx.params.lengths):
            self._write_positions(ctx, index, nll, longest)
        stride = ctx.params.options.get("sliding_stride")
        key = self.state_of(ctx).key
        mask = None
        if key is not None:
            full = nll if longest == len(ids) else None  # 'self' reuses the longest pass as its full pass
            mask = self._key_mask(ctx, key, index, sample, full)
        results = []
        for cell in cells:
            predicted = nll[:cell.length - 1]
            mean = float(predicted.double().mean())
            metrics = {"ppl": math.exp(mean), "nll": mean, "tokens": cell.length - 1, "bos": ctx.params.bos,
                       "doc_id": sample.doc_id, "offset": sample.offset,
                       "chance_nll": math.log(len(ctx.tokenizer))}
            if mask is not None:
                metrics.update(self._key_metrics(key.settings, predicted, mask, ctx.params.bos))
            if stride:
                total, count = _sliding_nll(ctx, ids, cell.length, stride)
                metrics.update(ppl_sliding=math.exp(total / count), sliding_window=cell.length,
                               sliding_stride=stride, sliding_tokens=count)
            results.append(metrics)
        return results

    def _key_mask(self, ctx: RunContext, key: kt.KeyState, index: int, sample: Sample, full) -> list[bool]:
        """Per sample token: is it key? Spans from the run folder's cache, else computed once and cached."""
        evaluator, settings = key.evaluator, key.settings
        own = evaluator.name == "self"
        tokenizer = ctx.tokenizer if own else evaluator.tokenizer
        bos = bool(bos_ids(tokenizer, ctx.params.bos))
        if own:
            record = ctx.base_record
            identity = "|".join(str(record.get(k)) for k in ("fingerprint", "rope_hash", "dtype", "attn"))
        else:
            identity = f"{evaluator.identity}|{ctx.engine.dtype}"
        text = key.texts[index]
        cache_key = kt.cache_key(identity, settings, bos, text.digest)
        if key.cache is None:
            key.cache = kt.read_cache(ctx.run_dir)
        spans = key.cache.get(cache_key)
        if spans is None:
            engine = ctx.engine if own else ctx.load_engine(evaluator.name)
            spans = kt.compute_spans(engine, tokenizer, text, settings, bos, sample.tokens if own else None,
                                     full if own else None)
            key.cache[cache_key] = spans
            ctx.write_side(kt.SIDE_STEM, {"key": cache_key, "evaluator": evaluator.name, "identity": identity,
                                          **settings.record(), "bos": bos, "sample_hash": text.digest,
                                          "doc_id": sample.doc_id, "offset": sample.offset, "spans": spans})
        return kt.key_mask(text.offsets, spans)

    @staticmethod
    def _key_metrics(settings: kt.KeySettings, predicted, mask: list[bool], bos: bool) -> dict[str, Any]:
        """ppl_key over the key tokens among these predictions (prediction k predicts sample token k + 1 - b:
        b = 1 with BOS)."""
        b = 1 if bos else 0
        keys = [k for k in range(predicted.numel()) if mask[k + 1 - b]]
        out: dict[str, Any] = {**settings.record(), "key_tokens": len(keys)}
        if not keys:
            return {**out, "nll_key": None, "ppl_key": None,
                    "key_note": "no key token among the L-1 predictions: ppl_key undefined"}
        nll_key = float(predicted[keys].double().mean())
        return {**out, "nll_key": nll_key, "ppl_key": math.exp(nll_key), "key_note": None}

    def _write_positions(self, ctx: RunContext, sample: int, nll, length: int) -> None:
        width = max(1, -(-nll.numel() // BUCKETS))
        for start in range(0, nll.numel(), width):
            part = nll[start:start + width]
            # position of a prediction = index of the predicted token in the L-token input
            ctx.write_side("positions", {"task": self.name, "setting": ctx.base_record["setting"],
                                         "rope_hash": ctx.base_record["rope_hash"], "sample": sample,
                                         "length": length,
                                         "pos_start": start + 1, "pos_end": start + 1 + part.numel(),
                                         "nll": float(part.double().mean()), "tokens": part.numel()})


TASK = PerplexityTask()


def _passes(cells: list[Cell], length_dependent: bool) -> list[list[Cell]]:
    """The cells each pass scores: every length of a sample (one per length where RoPE depends on it)."""
    units: dict[tuple, list[Cell]] = {}
    for cell in cells:
        units.setdefault((cell.sample, cell.length) if length_dependent else (cell.sample,), []).append(cell)
    return list(units.values())
