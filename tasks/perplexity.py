"""Perplexity vs context length (ppl@L, docs/design.md) and per-position loss.

One forward pass over the longest length yields every shorter L, because a causal model's prediction
at position t never sees later tokens; length-dependent RoPE (dynamic NTK, LongRoPE) gets one pass per
L with its frequencies fixed for that L (the engine does that). Per-position loss of the longest pass
goes to positions.jsonl in buckets: that curve shows the RoPE cliff directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.corpus import Sample, make_samples
from harness.errors import InputError
from harness.metrics import MeasureSpec, PositionMeasureSpec
from tasks.base import Cell, Option, Preflight, Prepared, RunContext, Task, TaskParams

BUCKETS = 128  # per-position buckets over the longest length

MEASURE = MeasureSpec(
    metric="nll",
    name="ppl@L",
    transform="exp",
    factor=1.5,
    reference="tune_len",
    log_interp=True,
    description="the model sees exactly L tokens (BOS + the sample's first L-1); ppl@L = exp(mean over samples "
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
    description="mean NLL (nats) of the predictions in each position bucket of the longest pass (positions.jsonl), "
                "token-weighted over samples: the loss at a token position, not averaged up to it",
)

MEASURES = [MEASURE, POSITION_LOSS]


def _sliding_nll(ctx: RunContext, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """Press / HF sliding-window NLL over `ids`: windows of `window` tokens advancing by `stride`;
    each token is scored once, in the first window that reaches it, with up to window-stride context.
    Returns (total NLL, scored tokens): token-weighted."""
    total, count, scored_to = 0.0, 0, 1
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        nll = ctx.engine.token_nll(ids[begin:end])  # predictions of ids[begin+1 : end]
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
    """The prepared state: the corpus samples of the longest length (every length reads their prefixes)."""

    samples: list[Sample]


class PerplexityTask(Task):
    name = "perplexity"
    measures = tuple(MEASURES)

    options = (Option("sliding_stride", "perplexity: also report ppl_sliding@L,S (window L, stride S) over each "
                      "sample", type=int, metavar="S"),)

    def identity(self, params: TaskParams) -> dict[str, Any]:
        # samples depend on the longest length (sample i = tokens [i*(M-b), (i+1)*(M-b)))
        return {**super().identity(params), "max_length": max(params.lengths)}

    def cells(self, params: TaskParams) -> list[Cell]:
        return [Cell(length, None, sample) for sample in range(params.samples) for length in sorted(params.lengths)]

    def prepare(self, pre: Preflight) -> Prepared[Samples]:
        params = pre.params
        stride = params.options.get("sliding_stride")
        if stride is not None and (not isinstance(stride, int) or stride < 1):
            raise InputError(f"--sliding-stride must be a positive number of tokens (got {stride!r}): e.g. 512")
        samples = make_samples(pre.tokenizer, params.corpus, max(params.lengths), params.samples, params.bos)
        if len(samples) < params.samples:
            pre.warn(f"corpus {params.corpus!r} yields only {len(samples)} samples of {max(params.lengths)} tokens "
                     f"(asked {params.samples}): running those")
        return Prepared(Samples(samples), len(samples))

    def groups(self, ctx: RunContext, cells: list[Cell]) -> list[list[Cell]]:
        if ctx.engine is not None and ctx.engine.length_dependent:
            return [[c] for c in cells]
        by_sample: dict[int, list[Cell]] = {}
        for cell in cells:
            by_sample.setdefault(cell.sample, []).append(cell)
        return list(by_sample.values())

    def _ids(self, ctx: RunContext, sample: Sample) -> list[int]:
        bos = [ctx.tokenizer.bos_token_id] if ctx.params.bos else []
        return bos + sample.tokens

    def score_group(self, ctx: RunContext, cells: list[Cell]) -> list[dict[str, Any]]:
        sample = self.state_of(ctx).samples[cells[0].sample]
        ids = self._ids(ctx, sample)
        longest = max(c.length for c in cells)
        plan = ctx.engine.plan(longest)
        nll = ctx.engine.token_nll(ids[:longest], plan)
        if longest == max(ctx.params.lengths):
            self._write_positions(ctx, cells[0].sample, nll, longest)
        stride = ctx.params.options.get("sliding_stride")
        results = []
        for cell in cells:
            predicted = nll[:cell.length - 1]
            metrics = {"ppl": math.exp(float(predicted.double().mean())), "nll": float(predicted.double().mean()), "tokens": cell.length - 1,
                       "bos": ctx.params.bos, "doc_id": sample.doc_id, "offset": sample.offset, "plan": str(plan)}
            if stride:
                total, count = _sliding_nll(ctx, ids, cell.length, stride)
                metrics.update(ppl_sliding=math.exp(total / count), sliding_window=cell.length,
                               sliding_stride=stride, sliding_tokens=count)
            results.append(metrics)
        return results

    def _write_positions(self, ctx: RunContext, sample: int, nll, length: int) -> None:
        width = max(1, -(-nll.numel() // BUCKETS))
        for start in range(0, nll.numel(), width):
            part = nll[start:start + width]
            # position of a prediction = index of the predicted token in the L-token input
            ctx.write_side("positions", {"task": self.name, "setting": ctx.base_record["setting"],
                                         "rope_hash": ctx.base_record["rope_hash"], "sample": sample, "length": length,
                                         "pos_start": start + 1, "pos_end": start + 1 + part.numel(),
                                         "nll": float(part.double().mean()), "tokens": part.numel()})


TASK = PerplexityTask()
