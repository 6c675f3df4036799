"""The memory planner: how one sequence is scored (single pass, layer-streamed, or chunked prefill).

A pure function of the model config, the length, the dtype, the budget and two flags (a generation
prompt; offloading allowed), never of momentary free memory, so reruns plan the same; the estimates are
conservative (benchmarks/memory.py measures them).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import rope_config, stream

HEAD_CHUNK = 1024  # tokens per output-head / loss sub-chunk: bounds logits at HEAD_CHUNK x vocab
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
STRATEGIES = ("auto", "single", "stream", "prefill")
STREAM_MAX_CHUNK = 4096  # query tokens per layer-streamed chunk: larger buys no speed, only activations


@dataclass(frozen=True)
class Plan:
    """How one sequence is scored: a single pass, layer-streamed in `chunk`-token query chunks, or prefill
    through the KV cache in `chunk`-token pieces. `offload` (a generation prompt's stream plan only): the
    cache it fills goes layer by layer to host memory (transformers' offloading DynamicCache)."""

    strategy: str  # "single" | "stream" | "prefill"
    chunk: int
    estimate_bytes: int
    fits: bool = True
    offload: bool = False

    def __str__(self) -> str:
        text = "single" if self.strategy == "single" else f"{self.strategy}:{self.chunk}"
        return text + "+offload" if self.offload else text


def _shape(config, dtype: str) -> tuple:
    """(text config, bytes per weight, hidden, intermediate, heads, kv heads, head dim): what the estimates
    read."""
    text = rope_config.text_config(config)
    hidden, inter = text.hidden_size, getattr(text, "intermediate_size", 4 * text.hidden_size)
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return text, _DTYPE_BYTES[dtype], hidden, inter, heads, kv_heads, head_dim


def estimate_bytes(config, length: int, chunk: int | None, dtype: str, attn: str, n_params: int,
                   strategy: str | None = None) -> int:
    """Conservative peak-memory estimate of scoring `length` tokens (weights included).

    Per token of a pass: residual stream and q/k/v/o projections (~8 x hidden), the MLP's
    intermediate activations (3 x intermediate), float32 final hidden states; eager attention also
    materialises heads x q x kv scores. Prefill adds the KV cache over the whole length and, for sdpa,
    the attention mask of q x kv (a single chunk as well): benchmarks/memory.py measured
    ~5.8 bytes per query-key pair whatever the number of heads (2 or 8; a bool mask and its float form;
    sdpa's fused kernels take the mask, no heads x q x kv scores exist), counted as 8 for allocator slack.
    `strategy="stream"` (chunk = query tokens per layer step): see `_stream_bytes`.
    """
    if strategy == "stream":
        return _stream_bytes(config, length, chunk or length, dtype, n_params)
    text, bytes_w, hidden, inter, heads, kv_heads, head_dim = _shape(config, dtype)
    q_len = length if chunk is None else min(chunk, length)
    activations = q_len * (8 * hidden + 3 * inter) * bytes_w + length * hidden * 4
    head = head_bytes(config, length)
    weights = n_params * bytes_w
    cache = 0 if chunk is None else kv_cache_bytes(config, length, dtype)
    # eager: heads x q x kv scores; sdpa prefill: the q x kv mask (a single chunk measured as much)
    scores = heads * q_len * length * 4 if attn == "eager" else 8 * q_len * length if chunk is not None else 0
    return int(weights + activations + head + cache + scores)


def head_bytes(config, length: int) -> int:
    """The output head and loss over one sub-chunk: HEAD_CHUNK x vocab float32 logits, three times (the head's
    output, its float32 copy, log-softmax), whatever the strategy."""
    return min(HEAD_CHUNK, length) * rope_config.text_config(config).vocab_size * 4 * 3


def kv_cache_bytes(config, length: int, dtype: str) -> int:
    """Every layer's K/V over `length` tokens (what a prefill's cache holds; sliding layers in full)."""
    text, bytes_w, _, _, _, kv_heads, head_dim = _shape(config, dtype)
    return 2 * text.num_hidden_layers * kv_heads * head_dim * length * bytes_w


def offloaded_cache_bytes(config, length: int, dtype: str) -> int:
    """What an offloading DynamicCache (transformers 5.x, every layer offloaded) keeps on the device beyond
    the stream pass: two layers' K/V over `length`. In the streamed prefill, `update` concatenates the
    finished layer into a new device tensor before moving it out (the pass's own buffer for that layer is
    in `_stream_bytes`); in each decoding step the layer being updated is on the device twice during its
    concatenation while the next layer is prefetched (three layers, with no residual stream or activations
    of the pass alive, which `_stream_bytes` covers)."""
    return 2 * kv_cache_bytes(config, length, dtype) // rope_config.text_config(config).num_hidden_layers


def _stream_bytes(config, length: int, chunk: int, dtype: str, n_params: int) -> int:
    """Layer-streamed pass: weights + the residual stream (2 x T x H, model dtype: the layer's input and
    output chunk) + one layer's K/V over T + one query chunk's activations + its final hidden states +
    the output head sub-chunk. Independent of the number of layers. A chunk's activations count twice a
    pass's per-token model: benchmarks/memory.py measured ~1.9x that model for 4,096-token chunks (rotary
    temporaries, gate/up/act/product of the MLP live at once, allocator slack).
    Full-attention layers build no mask (CPU: two fused-kernel calls merged by log-sum-exp; CUDA: sdpa's
    lower-right causal bias); sliding-window layers build a bool and a float mask of chunk x (window +
    chunk); layers with attention-logit softcapping (Gemma2) build heads x chunk x T float32 scores."""
    text, bytes_w, hidden, inter, heads, kv_heads, head_dim = _shape(config, dtype)
    q_len = min(chunk, length)
    weights = n_params * bytes_w
    residual = 2 * length * hidden * bytes_w
    layer_kv = 2 * kv_heads * head_dim * length * bytes_w
    activations = q_len * 2 * (8 * hidden + 3 * inter) * bytes_w + q_len * hidden * 4
    window = getattr(text, "sliding_window", None)
    mask = 5 * q_len * min(length, window + q_len) if window else 0
    scores = heads * q_len * length * 4 if getattr(text, "attn_logit_softcapping", None) else 0
    head = head_bytes(config, length)
    return int(weights + residual + layer_kv + activations + mask + scores + head)


def make_plan(config, length: int, *, dtype: str, attn: str, n_params: int, max_memory: int | None = None,
              chunk_size: int | None = None, strategy: str = "auto", stream_ok: bool | None = None,
              generation: bool = False, offload_ok: bool = False) -> Plan:
    """Single pass when it fits (or no budget is set), else layer-streamed scoring with the largest
    power-of-two query chunk (<= STREAM_MAX_CHUNK) that fits, where the family supports it, else the
    largest power-of-two prefill chunk that fits. `chunk_size` below the length forces prefill in that
    chunk (as --chunk-size does). `strategy` other than "auto" forces single / stream / prefill (with
    `chunk_size` as the chunk when given, else the largest that fits); `fits` tells whether it does.
    `stream_ok`: whether this model streams exactly (Engine.stream_exact); None = its model type is one
    `harness.stream` supports (all a config tells).

    `generation`: the sequence is a prompt to generate after, so every estimate also counts the KV cache
    that stays for decoding (`kv_cache_bytes`; prefill's estimate holds it already): a single pass or a
    stream chunk is chosen only where it fits with the cache. It is at least weights + twice the cache:
    each decoding step concatenates every layer's K/V one token longer (DynamicLayer.update), and the
    freed, one-token-shorter blocks are not reused at once (benchmarks/memory.py, 24-layer model at 16K
    on CPU: 4 new tokens peaked 0.31 x the cache above the streamed prompt's peak). With `offload_ok`
    (the engine: a CUDA device), a stream plan whose cache does not fit at any chunk offloads it
    (`offload=True`; the estimate counts `offloaded_cache_bytes` instead: decoding then holds ~3 layers on
    the device). Without `generation` every plan and estimate is as before."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if stream_ok is None:
        stream_ok = stream.refusal(config) is None
    cache = kv_cache_bytes(config, length, dtype) if generation else 0
    offloaded = offloaded_cache_bytes(config, length, dtype) if generation and offload_ok else None
    decode = n_params * _DTYPE_BYTES[dtype] + 2 * cache if generation else 0

    def est(chunk: int | None, kind: str | None = None) -> int:
        need = estimate_bytes(config, length, chunk, dtype, attn, n_params, kind)
        return max(need + cache if kind == "stream" or chunk is None else need, decode)  # prefill: has it

    def fits(need: int) -> bool:
        return max_memory is None or need <= max_memory

    def stream_plan(chunk: int, offload: bool) -> Plan:
        chunk = min(chunk, length)
        need = (estimate_bytes(config, length, chunk, dtype, attn, n_params, "stream") + offloaded
                if offload else est(chunk, "stream"))
        return Plan("stream", chunk, need, fits(need), offload)

    def prefill_plan(chunk: int) -> Plan:
        need = est(chunk)
        return Plan("prefill", chunk, need, fits(need))

    def largest(kind: str | None, top: int) -> Plan | None:
        """The largest power-of-two chunk that fits (stream: with the cache on the device at any chunk
        before offloading it)."""
        for offload in (False, True) if kind == "stream" and offloaded is not None else (False,):
            chunk = 1 << max(6, min(top, length - 1).bit_length() - 1)
            while chunk >= 64:
                plan = stream_plan(chunk, offload) if kind == "stream" else prefill_plan(chunk)
                if plan.fits:
                    return plan
                chunk //= 2
        return None

    if strategy == "single":
        need = est(None)
        return Plan("single", length, need, fits(need))
    if strategy == "stream":
        if not stream_ok:
            raise ValueError("strategy stream: "
                             f"{stream.refusal(config) or 'this model does not stream exactly'}")
        if chunk_size is None:
            return largest("stream", STREAM_MAX_CHUNK) or stream_plan(64, offloaded is not None)
        plan = stream_plan(chunk_size, False)
        return plan if plan.fits or offloaded is None else stream_plan(plan.chunk, True)
    if strategy == "prefill" and chunk_size is None:
        return largest(None, length) or Plan("prefill", 64, est(64), fits=False)
    if chunk_size is not None and (chunk_size < length or strategy == "prefill"):
        need = est(min(chunk_size, length))
        return Plan("prefill", min(chunk_size, length), need, fits(need))
    single = est(None)
    if fits(single):
        return Plan("single", length, single)
    if stream_ok:
        plan = largest("stream", STREAM_MAX_CHUNK)
        if plan is not None:
            return plan
    return largest(None, length) or Plan("prefill", 64, est(64), fits=False)


BATCH_MAX = 64  # rows per forward, at most
# auto batching adds rows up to this many tokens a forward: past 64K one row fills a GPU; on CPU, 2K tokens
# (benchmarks/speed.py: 8 rows of 256 tokens 1.30x the throughput of one at a time, 8 rows of 1,024 0.91x)
BATCH_TOKENS = {"accelerator": 1 << 16, "cpu": 1 << 11}


def batch_rows(config, length: int, requested: int | str, *, dtype: str, attn: str, n_params: int,
               max_memory: int | None, generation: bool = False, accelerator: bool = False) -> int:
    """Rows of `length` tokens in one single-pass forward: `requested` (a number, or "auto": the most up to
    BATCH_MAX rows and BATCH_TOKENS tokens), lowered to what fits `max_memory`. Weights and the output
    head's sub-chunk (run row by row) count once; each row adds its pass's activations, and for generation
    its KV cache."""
    if requested == "auto":
        tokens = BATCH_TOKENS["accelerator" if accelerator else "cpu"]
        requested = max(1, min(BATCH_MAX, tokens // max(length, 1)))
    rows = int(requested)
    if rows <= 1 or max_memory is None:
        return max(rows, 1)
    one = estimate_bytes(config, length, None, dtype, attn, n_params)
    fixed = n_params * _DTYPE_BYTES[dtype] + head_bytes(config, length)
    per_row = one - fixed + (kv_cache_bytes(config, length, dtype) if generation else 0)
    return max(1, min(rows, (max_memory - fixed) // max(per_row, 1)))
