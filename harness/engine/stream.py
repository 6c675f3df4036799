"""Layer-streamed scoring: the decoder runs one layer at a time over the whole sequence.

Used by `harness.engine.engine` only (strategy `stream`). The residual stream [T, H] stays in memory (model
dtype); each decoder layer then runs over it in query chunks, through the layer's own HF forward (its
norms, projections, q/k norms, rotary application, MLP and residual wiring are the model's code, not a
re-implementation). Two things are swapped in for the pass:

- the cache the layer writes its keys and values to is `_LayerKV`: one buffer of T positions for this
  layer alone, filled chunk by chunk, so every token's K/V is computed once and the layer's full K/V
  (up to the current chunk: all a causal query needs) is what each query chunk attends to; it is freed
  before the next layer;
- the attention function is `_attention`: the query chunk against those keys, causal at the chunk's
  offset: torch's scaled_dot_product_attention with the lower-right causal bias (on CPU: its fused
  kernel twice, keys before the chunk and the chunk's own keys, merged by log-sum-exp, which is faster
  and builds no mask); a band mask where the layer has a sliding window; the eager formula on the
  chunk for layers with attention-logit softcapping (Gemma2).

Peak memory ~ weights + the residual stream + one layer's K/V + one chunk's activations, whatever the
number of layers. The final norm runs per chunk; the engine does output head and loss as for any plan.

`prefill` is the same pass for generation: each layer's K/V, once complete, also goes into a transformers
cache (as a prefill through the model would fill it), and the final hidden state of the last position
comes back; the engine then generates / teacher-forces from that cache through the model.

Only the model types in `SUPPORTED` are streamed; `Engine.self_check` also compares a stream pass with
the model's own logits and refuses the strategy for a model that does not reproduce them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from harness.model import rope_config

ATTENTION_NAME = "rope_harness_stream"
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa (torch 2.5+)
# torch's CPU flash-attention kernel (what sdpa runs on CPU), called directly for its log-sum-exp output
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


@dataclass(frozen=True)
class Family:
    norm: str = "norm"  # attribute of the decoder holding the final norm


# model_type (of the text config) -> how its decoder is laid out. Every family here keeps all of its
# per-token work inside embed_tokens (Gemma's embedding scale included), the decoder layers and the final
# norm, with RoPE from decoder.rotary_emb; a family that scales or mixes anything in its model forward
# (Granite/HyperCLOVAX multipliers, Mamba hybrids, multimodal wrappers) is not listed and is refused.
SUPPORTED: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(),
    "qwen2": Family(),
    "qwen3": Family(),
    "gemma": Family(),
    "gemma2": Family(),
    "gemma3_text": Family(),
    "phi3": Family(),
    "gpt_neox": Family(norm="final_layer_norm"),
}


def refusal(config) -> str | None:
    """Why the config cannot be streamed (None when its model type is supported). Config only: the planner
    calls it without a model."""
    text = rope_config.text_config(config)
    kind = getattr(text, "model_type", None)
    if text is not config:
        return (f"layer-streamed scoring runs text-only decoders "
                f"({getattr(config, 'model_type', None)!r} wraps {kind!r})")
    if kind not in SUPPORTED:
        return f"layer-streamed scoring supports model types {', '.join(SUPPORTED)} (not {kind!r})"
    if getattr(text, "use_bidirectional_attention", False):
        return "layer-streamed scoring is causal only (use_bidirectional_attention is set)"
    return None


def model_refusal(model) -> str | None:
    """`refusal` plus the decoder layout the stream pass relies on."""
    reason = refusal(model.config)
    if reason:
        return reason
    decoder = model.base_model
    family = SUPPORTED[rope_config.text_config(model.config).model_type]
    missing = [name for name in ("layers", "rotary_emb", family.norm) if not hasattr(decoder, name)]
    if missing:
        return f"layer-streamed scoring: {type(decoder).__name__} has no {', '.join(missing)}"
    return None


# ------------------------------------------------------------------------------------- attention


class _LayerKV:
    """The cache one decoder layer sees during a stream pass: its K/V for all T positions, written as the
    query chunks pass; `update` returns the keys and values of every position up to the chunk's end."""

    def __init__(self, total: int):
        self.total = total
        self.filled = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.keys is None:
            batch, heads, _, dim = key_states.shape
            self.keys = key_states.new_empty(batch, heads, self.total, dim)
            self.values = value_states.new_empty(batch, heads, self.total, value_states.shape[-1])
        end = self.filled + key_states.shape[-2]
        self.keys[:, :, self.filled:end] = key_states
        self.values[:, :, self.filled:end] = value_states
        self.filled = end
        return self.keys[:, :, :end], self.values[:, :, :end]


def _visible(n: int, k: int, offset: int, window: int | None, device) -> torch.Tensor:
    """Boolean [n, k] mask: query i (at key position offset + i) sees key j when j <= offset + i and, in a
    sliding-window layer, j > offset + i - window (transformers' sliding_window_overlay)."""
    query = torch.arange(n, device=device)[:, None] + offset
    key = torch.arange(k, device=device)[None, :]
    visible = key <= query
    if window is not None:
        visible &= key > query - window
    return visible


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
               softcap=None, **kwargs):
    """Attention of a query chunk (the last n positions of `key`) in transformers' attention-interface
    convention: query [b, heads, n, d], key/value [b, kv_heads, k, d] -> ([b, n, heads, d], None)."""
    if attention_mask is not None or not getattr(module, "is_causal", True):
        raise RuntimeError("layer-streamed attention is causal and builds its own mask (got a mask or a "
                           "non-causal layer)")
    n = query.shape[-2]
    offset = key.shape[-2] - n  # keys before the first query
    if sliding_window is not None and offset >= sliding_window:
        # keys [0, first) lie outside every query's window: drop them; the chunk's first query then sees
        # window - 1 keys before it, so key/value become [b, kv_heads, window - 1 + n, d]
        first = offset - sliding_window + 1
        key, value, offset = key[:, :, first:], value[:, :, first:], sliding_window - 1
    scale = scaling if scaling is not None else module.head_dim ** -0.5
    # the window needs a mask only where it cuts into what the last query sees (offset + n keys)
    window = sliding_window if sliding_window is not None and sliding_window < offset + n else None
    softcapped = softcap is not None  # sdpa has no logit softcapping: the eager formula
    # full attention on CPU: the fused kernel twice, no [n, k] mask (see _split_attention)
    split_on_cpu = window is None and query.device.type == "cpu" and _CPU_FLASH is not None
    if softcapped:
        out = _softcapped_attention(query, key, value, offset, window, scale, softcap)
    elif split_on_cpu:
        out = _split_attention(query, key, value, offset, scale)
    else:
        out = _sdpa_attention(query, key, value, offset, window, scale)
    return out.transpose(1, 2).contiguous(), None  # [b, heads, n, d] -> [b, n, heads, d]


def _softcapped_attention(query, key, value, offset: int, window: int | None, scale: float,
                          softcap: float) -> torch.Tensor:
    """The eager formula with attention-logit softcapping (Gemma2): K/V repeated to every query head, the
    [b, heads, n, k] scores capped by softcap x tanh(scores / softcap), masked, softmax in float32."""
    n, k = query.shape[-2], key.shape[-2]
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scale  # [b, heads, n, k]
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~_visible(n, k, offset, window, query.device), torch.finfo(scores.dtype).min)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    del scores
    return torch.matmul(probs, value)  # [b, heads, n, d]


def _sdpa_attention(query, key, value, offset: int, window: int | None, scale: float) -> torch.Tensor:
    """torch's scaled_dot_product_attention: the lower-right causal bias, or a band mask [n, k] in a
    sliding-window layer; GQA natively (enable_gqa) where a kernel that takes it can run."""
    n, k = query.shape[-2], key.shape[-2]
    groups = query.shape[1] // key.shape[1]
    # CUDA runs GQA only in sdpa's flash kernel (half precision, no mask); K/V per query head let the
    # memory-efficient kernel run instead of the math fallback's heads x n x k scores
    flash_cannot_run = query.device.type != "cpu" and (window is not None or query.dtype == torch.float32)
    repeat_kv = groups > 1 and (not _SDPA_GQA or flash_cannot_run)
    if repeat_kv:  # key/value [b, kv_heads, k, d] -> [b, heads, k, d]
        key, value, groups = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1), 1
    mask = causal_lower_right(n, k) if window is None else _visible(n, k, offset, window, query.device)
    gqa = {"enable_gqa": True} if groups > 1 else {}
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale, **gqa)


def _split_attention(query, key, value, offset: int, scale: float) -> torch.Tensor:
    """CPU: the chunk against the keys before it (no mask) and against its own keys (causal), merged by
    their log-sum-exps. Exact; sdpa with the [n, k] lower-right mask would be ~2x slower on CPU (its kernel
    cannot skip the masked blocks) and materialise the mask twice (bool and float). Query heads are
    grouped by kv head, the kv heads broadcast over their group (GQA without copies)."""
    batch, heads, n, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    q = query.reshape(batch * kv_heads, groups, n, dim)

    def spread(x):  # [b, kv_heads, k, d] -> [b * kv_heads, groups, k, d], expanded (no copy per head)
        return x.reshape(batch * kv_heads, 1, *x.shape[-2:]).expand(-1, groups, -1, -1)

    key, value = spread(key), spread(value)
    # out [b * kv_heads, groups, n, d], lse [b * kv_heads, groups, n]: the chunk against its own n keys
    out, lse = _CPU_FLASH(q, key[:, :, offset:], value[:, :, offset:], is_causal=True, scale=scale)[:2]
    if offset:  # every query also sees all `offset` keys before the chunk: no mask needed there
        before, before_lse = _CPU_FLASH(q, key[:, :, :offset], value[:, :, :offset], scale=scale)[:2]
        total = torch.logaddexp(lse, before_lse)
        out = (out.float() * (lse - total).exp()[..., None]
               + before.float() * (before_lse - total).exp()[..., None]).to(query.dtype)
    return out.reshape(batch, heads, n, dim)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)


class _StreamAttention:
    """Within the context every attention module of the decoder calls `_attention` (the config's attention
    implementation is swapped, and restored on exit)."""

    def __init__(self, decoder):
        self.configs = {id(m.config): m.config for m in decoder.layers.modules() if hasattr(m, "config")}
        self.configs[id(decoder.config)] = decoder.config

    def __enter__(self):
        _register()
        self.saved = {key: c._attn_implementation_internal for key, c in self.configs.items()}
        for config in self.configs.values():
            config._attn_implementation_internal = ATTENTION_NAME

    def __exit__(self, *exc):
        for key, config in self.configs.items():
            config._attn_implementation_internal = self.saved[key]


# ------------------------------------------------------------------------------------------ pass


def _cache_kw(layer) -> str:
    params = inspect.signature(type(layer).forward).parameters
    return next((name for name in ("layer_past", "cache", "past_key_values") if name in params), "cache")


def _run_layers(model, ids: torch.Tensor, chunk: int, cache=None) -> torch.Tensor:
    """The residual stream [1, T, H] after every decoder layer (before the final norm), each layer over the
    whole sequence in `chunk`-token query chunks. With `cache` (a transformers Cache built for the model's
    config), each layer's K/V over all T positions goes into it as soon as the layer is done (`update` with
    the layer's index: the cache keeps what a prefill would, e.g. a sliding layer's last window - 1 tokens,
    and an offloading cache moves the layer to the CPU); activations still live one layer at a time."""
    decoder = model.base_model
    text = rope_config.text_config(model.config)
    total = ids.numel()
    rotary = decoder.rotary_emb
    per_type = "layer_type" in inspect.signature(rotary.forward).parameters  # Gemma3: RoPE per layer type
    layer_types = getattr(text, "layer_types", None)
    residual = decoder.get_input_embeddings()(ids[None])  # [1, T, H], Gemma's embedding scale included
    positions = torch.arange(total, device=ids.device)[None]
    with _StreamAttention(decoder):
        for index, layer in enumerate(decoder.layers[: text.num_hidden_layers]):
            kv = _LayerKV(total)
            cache_kw = _cache_kw(layer)
            for start in range(0, total, chunk):
                x = residual[:, start:start + chunk]
                pos = positions[:, start:start + chunk]
                rope = rotary(x, pos, layer_types[index]) if per_type else rotary(x, pos)
                out = layer(x, attention_mask=None, position_ids=pos, position_embeddings=rope,
                            **{cache_kw: kv})
                # in place: later chunks need this layer's K/V of earlier chunks, never their inputs
                residual[:, start:start + chunk] = out[0] if isinstance(out, tuple) else out
            if cache is not None:
                cache.update(kv.keys, kv.values, index)
                _own_window(cache, index)
            del kv
    return residual


def _own_window(cache, index: int) -> None:
    """A sliding layer's cache keeps its last window - 1 positions as a view of all T it was given: copy them
    out, so that the cache holds the window and the layer's T positions are freed."""
    layers = getattr(cache, "layers", None)
    layer = layers[index] if layers is not None and index < len(layers) else None
    if getattr(layer, "is_sliding", False) and layer.keys is not None:
        layer.keys, layer.values = layer.keys.clone(), layer.values.clone()


def hidden_chunks(model, ids: torch.Tensor, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, final hidden states [n, H]) of `ids` (1-D) in `chunk`-token pieces, computed layer by
    layer over the whole sequence. The caller fixes length-dependent RoPE for len(ids) (as for any pass)."""
    residual = _run_layers(model, ids, chunk)
    norm = getattr(model.base_model, SUPPORTED[rope_config.text_config(model.config).model_type].norm)
    for start in range(0, ids.numel(), chunk):
        yield start, norm(residual[0, start:start + chunk])


def prefill(model, ids: torch.Tensor, chunk: int, cache) -> torch.Tensor:
    """A layer-streamed prefill: fills `cache` (empty, built for the model's config) with the K/V of every
    layer over `ids` (1-D) as a prefill through the model would, and returns the final hidden state of the
    last position [1, H] (what the output head reads for the next token). Generation and teacher forcing
    then run from `cache` through the model as after any prefill. Memory: the cache holds every layer's K/V
    (generation needs them); the activations are one layer's, as in `hidden_chunks`."""
    residual = _run_layers(model, ids, chunk, cache)
    norm = getattr(model.base_model, SUPPORTED[rope_config.text_config(model.config).model_type].norm)
    return norm(residual[0, -1:])
