"""Decoding after a prefill: the cache it fills, what a layer-streamed prefill returns, greedy steps."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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


@contextmanager
def preallocated(cache, room: int) -> Iterator[None]:
    """Each full-attention layer of a resident DynamicCache moved into a buffer with `room` free positions
    for the greedy steps, and back after (views of the buffers). A DynamicCache grows by concatenation,
    copying the whole layer every token; on CPU each copy is fresh pages (memory_guard's allocator rule):
    SmolLM2 decoded 2.1x slower at 8K, 2.7x at 16K (benchmarks/decode.py). Sliding layers (their window),
    linear and offloaded caches stay as they are."""
    from transformers.cache_utils import DynamicLayer, StaticLayer

    layers = [] if getattr(cache, "offloading", False) else getattr(cache, "layers", None) or []
    full = [i for i, layer in enumerate(layers) if type(layer) is DynamicLayer and layer.is_initialized]
    for index in full:  # one layer at a time: the extra memory is one layer's K/V
        static = StaticLayer(max_cache_len=layers[index].get_seq_length() + room)
        static.update(layers[index].keys, layers[index].values)
        layers[index] = static
    try:
        yield
    finally:
        for index in full:
            static, layer = layers[index], DynamicLayer()
            length = int(static.get_seq_length())
            layer.lazy_initialization(static.keys, static.values)
            layer.keys, layer.values = static.keys[:, :, :length], static.values[:, :, :length]
            layers[index] = layer


def greedy(model, cache_kw: str, cache, out, max_new_tokens: int, stop_ids: Sequence[int]) -> list[list[int]]:
    """Greedy tokens per row: a row ends at a stop id or max_new_tokens; the batch steps while any row
    runs (rows are independent, so each row's tokens are those it gets alone). The cache grows in place."""
    with preallocated(cache, max_new_tokens):
        return _greedy(model, cache_kw, cache, out, max_new_tokens, stop_ids)


def _greedy(model, cache_kw: str, cache, out, max_new_tokens: int,
            stop_ids: Sequence[int]) -> list[list[int]]:
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
