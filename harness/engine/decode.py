"""Decoding after a prefill: the cache it fills, what a layer-streamed prefill returns, greedy steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Prefilled:
    """A layer-streamed prefill's output: the next-token logits [1, 1, vocab] (as the model's output with
    logits_to_keep=1) and the final hidden state of the last prompt token [1, H] (the head's input)."""
    logits: torch.Tensor
    hidden: torch.Tensor


def new_cache(model, offload: bool = False):
    """An empty KV cache for `model` (offload: transformers' offloading cache, two layers on the device)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config, offloading=offload)


def greedy(model, cache_kw: str, cache, out, max_new_tokens: int, stop_ids: Sequence[int]) -> list[list[int]]:
    """Greedy tokens per row: a row ends at a stop id or max_new_tokens; the batch steps while any row
    runs (rows are independent, so each row's tokens are those it gets alone)."""
    rows = out.logits.shape[0]
    new: list[list[int]] = [[] for _ in range(rows)]
    running = set(range(rows))
    for _ in range(max_new_tokens):
        tokens = out.logits[:, -1].argmax(-1)
        for row in sorted(running):
            token = int(tokens[row])
            new[row].append(token)
            if token in stop_ids or len(new[row]) == max_new_tokens:
                running.discard(row)
        if not running:  # no forward whose logits nobody reads
            break
        out = model(input_ids=tokens[:, None], use_cache=True, logits_to_keep=1, **{cache_kw: cache})
    return new
