"""Perplexity vs context length (ppl@L of DESIGN.md) and per-position loss.

One forward pass over the longest length yields every shorter L, because a causal model's prediction
at position t never sees later tokens; length-dependent RoPE (dynamic NTK, LongRoPE) gets one pass per
L with its frequencies fixed for that L (the engine does that). Per-position loss of the longest pass
goes to positions.jsonl in buckets: that curve shows the RoPE cliff directly.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from harness.corpus import Sample, make_samples
from harness.engine import perplexity
from harness.errors import InputError
from harness.report_perplexity import FIGURES, MEASURE, MEASURES  # noqa: F401  (the report reads them here)
from tasks.base import Cell, RunContext, Task, TaskParams

BUCKETS = 128  # per-position buckets over the longest length


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


class PerplexityTask(Task):
    name = "perplexity"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sliding-stride", type=int, default=None, metavar="S",
                            help="perplexity: also report ppl_sliding@L,S (window L, stride S) over each sample")

    @staticmethod
    def option_names() -> list[str]:
        return ["sliding_stride"]

    def identity(self, params: TaskParams) -> dict[str, Any]:
        # samples depend on the longest length (sample i = tokens [i*(M-b), (i+1)*(M-b)))
        return {**super().identity(params), "max_length": max(params.lengths)}

    def cells(self, params: TaskParams) -> list[Cell]:
        return [Cell(length, None, sample) for sample in range(params.samples) for length in sorted(params.lengths)]

    def prepare(self, ctx: RunContext) -> int:
        params = ctx.params
        stride = params.options.get("sliding_stride")
        if stride is not None and (not isinstance(stride, int) or stride < 1):
            raise InputError(f"--sliding-stride must be a positive number of tokens (got {stride!r}): e.g. 512")
        samples = make_samples(ctx.tokenizer, params.corpus, max(params.lengths), params.samples, params.bos)
        if len(samples) < params.samples:
            ctx.warn(f"corpus {params.corpus!r} yields only {len(samples)} samples of {max(params.lengths)} tokens "
                     f"(asked {params.samples}): running those")
        ctx.state["samples"] = samples
        return len(samples)

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
        sample: Sample = ctx.state["samples"][cells[0].sample]
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
            metrics = {"ppl": perplexity(predicted), "nll": float(predicted.double().mean()), "tokens": cell.length - 1,
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
