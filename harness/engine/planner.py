"""The memory planner: how one sequence is scored (single pass, layer-streamed, or chunked prefill).

A pure function of the model config, the length, the dtype, the budget and two flags (a generation
prompt; a CUDA device), never of momentary free memory, so reruns plan the same; the estimates are
conservative (benchmarks/memory.py measures them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from harness.engine import STRATEGIES, stream
from harness.engine.memory_guard import available_at_start
from harness.model import rope_config

HEAD_CHUNK = 1024  # tokens per output-head / loss sub-chunk: bounds logits at HEAD_CHUNK x vocab
# after a generation prompt's prefill the head reads one position per step, and a teacher-forced answer in
# sub-chunks of this many tokens: its plan prices that, not a scoring pass's HEAD_CHUNK (Gemma's 262,144-token
# vocabulary: 2.3 GiB for 1,024 rows, benchmarks/real_strategies.py)
ANSWER_HEAD_CHUNK = 64
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
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


# what a pass allocates beyond the tensors modelled here (BLAS scratch, small tensors, rotary tables):
# benchmarks/memory.py measured 3 to 7 MiB on CPU
RUNTIME_BYTES = 16 << 20


def estimate_bytes(config, length: int, chunk: int | None, dtype: str, attn: str, n_params: int,
                   strategy: str | None = None, rows: int = 1, cuda: bool = False,
                   generation: bool = False) -> int:
    """Conservative peak-memory estimate of scoring `length` tokens (weights included), for `rows` sequences
    in one forward (single pass).

    A pass has two phases that never overlap: the decoder, one layer at a time (`_layer_bytes`; for sdpa
    the masks `_sdpa_masks` lists, bool and float, and then K/V repeated to every query head,
    since transformers' sdpa takes GQA natively only without a mask; eager attention: two heads x q x kv
    copies of the scores and its float mask; flash attention: none of these), then the output head over
    the final hidden states in sub-chunks (`head_bytes`). The peak is the larger phase, plus what both
    hold: the weights, prefill's cache (one layer twice while it is concatenated) and RUNTIME_BYTES.
    benchmarks/memory.py measures every strategy against it with RSS following the live tensors.
    `strategy="stream"` (chunk = query tokens per layer step; `cuda`: on a CUDA device): see
    `_stream_bytes`. `generation`: the head's sub-chunk is a teacher-forced answer's (ANSWER_HEAD_CHUNK).
    The cache a generation prompt keeps is `make_plan`'s to add."""
    head_rows = ANSWER_HEAD_CHUNK if generation else HEAD_CHUNK
    if strategy == "stream":
        return _stream_bytes(config, length, chunk or length, dtype, n_params, cuda, head_rows)
    text, bytes_w, hidden, inter, heads, kv_heads, head_dim = _shape(config, dtype)
    q_len = length if chunk is None else min(chunk, length)
    decoder = _layer_bytes(q_len, hidden, inter, bytes_w)
    full, sliding, window = _layer_kinds(text)
    if attn == "eager":
        kinds = int(full > 0) + int(sliding > 0)  # a float mask per kind of layer (sliding, full)
        decoder += heads * q_len * length * (bytes_w + 4) + kinds * q_len * length * bytes_w
        masked = True
    else:
        masks = _sdpa_masks(length, q_len, chunk is not None, full > 0, window) if "flash" not in attn else []
        decoder += sum(_mask_bytes(q_len, keys, bytes_w) for keys in masks)
        masked = bool(masks)
    if kv_heads < heads and masked:
        decoder += 2 * length * heads * head_dim * bytes_w
    final = rows * q_len * hidden * bytes_w + head_bytes(config, length, dtype, head_rows)  # row by row
    cache = 0  # prefill: every layer's K/V (a sliding layer's window and chunk), one layer twice in `update`
    if chunk is not None:
        keep = None if window is None else window - 1 + q_len  # a sliding layer's cache after a chunk
        cache = kv_cache_bytes(config, length, dtype, keep) + layer_kv_bytes(config, length, dtype)
    return int(n_params * bytes_w + RUNTIME_BYTES + rows * cache + max(rows * decoder, final))


def _layer_kinds(text) -> tuple[int, int, int | None]:
    """(full-attention layers, sliding layers, their window or None), as transformers' cache lays the
    layers out (Mistral: every layer sliding; Gemma2/3, Qwen2: both kinds)."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    types, kwargs = get_layer_types_and_kwargs(text)
    windows = [k["sliding_window"] for k in kwargs if k.get("sliding_window")]
    return len(types) - len(windows), len(windows), max(windows) if windows else None


def _sdpa_masks(length: int, q_len: int, cached: bool, full: bool, window: int | None) -> list[int]:
    """Keys per query of each mask transformers builds for sdpa (measured: masking_utils): none for full
    layers in a single pass or a first chunk (causal), q x length for them in later chunks; q x length for
    sliding layers in a single pass where the window cuts into it, q x (window - 1 + q) in a chunk on top
    of a cache (a sliding layer's cache keeps window - 1 tokens)."""
    masks = [length] if full and q_len < length else []
    if window is not None and window < length:
        masks.append(min(length, window - 1 + q_len) if cached else length)
    return masks


def _layer_bytes(tokens: int, hidden: int, inter: int, bytes_w: int) -> int:
    """One decoder layer's activations over `tokens`: the residual in and out, its norm, q/k/v/o and the
    rotary temporaries (~8 x hidden), the MLP's gate, up and product (3 x intermediate)."""
    return tokens * (8 * hidden + 3 * inter) * bytes_w


def _mask_bytes(queries: int, keys: int, bytes_w: int) -> int:
    """A boolean queries x keys mask and the float form sdpa adds to the scores."""
    return queries * keys * (1 + bytes_w)


def head_bytes(config, length: int, dtype: str = "float32", rows: int = HEAD_CHUNK) -> int:
    """The output head and loss over one sub-chunk of `rows` x vocab: logits in the model dtype, their
    float32 copy (none for a float32 model), log-softmax and the rank comparison's booleans."""
    bytes_w = _DTYPE_BYTES[dtype]
    per_entry = bytes_w + (0 if bytes_w == 4 else 4) + 4 + 1
    return min(rows, length) * rope_config.text_config(config).vocab_size * per_entry


def kv_cache_bytes(config, length: int, dtype: str, sliding_keep: int | None = None) -> int:
    """Every layer's K/V over `length` tokens, a sliding layer's over at most `sliding_keep` where given.
    A sliding layer's cache keeps window - 1 tokens, as a view of what its last `update` concatenated: the
    whole prompt after a single pass (None: all of it), window - 1 + q after a chunk of q, the window after
    a streamed prefill (which copies it out)."""
    full, sliding, _ = _layer_kinds(rope_config.text_config(config))
    kept = length if sliding_keep is None else min(length, sliding_keep)
    return (full * length + sliding * kept) * layer_kv_bytes(config, 1, dtype)


def layer_kv_bytes(config, length: int, dtype: str) -> int:
    """One layer's K/V over `length` tokens."""
    _, bytes_w, _, _, _, kv_heads, head_dim = _shape(config, dtype)
    return 2 * kv_heads * head_dim * length * bytes_w


def offloaded_cache_bytes(config, length: int, dtype: str) -> int:
    """What an offloading DynamicCache (transformers 5.x, every layer offloaded) keeps on the device beyond
    the stream pass: two layers' K/V over `length`. In the streamed prefill, `update` concatenates the
    finished layer into a new device tensor before moving it out (the pass's own buffer for that layer is
    in `_stream_bytes`); in each decoding step the layer being updated is on the device twice during its
    concatenation while the next layer is prefetched (three layers, with no residual stream or activations
    of the pass alive, which `_stream_bytes` covers)."""
    return 2 * layer_kv_bytes(config, length, dtype)


def _stream_bytes(config, length: int, chunk: int, dtype: str, n_params: int, cuda: bool,
                  head_rows: int = HEAD_CHUNK) -> int:
    """Layer-streamed pass: weights + the residual stream (T x H, model dtype, updated in place) + the larger
    of two phases: a layer step (that layer's K/V over T, one query chunk's activations) and the output head
    (one chunk's final hidden states, the head's sub-chunk). Independent of the number of layers.
    Full-attention layers build no mask (CPU: two fused-kernel calls merged by log-sum-exp; CUDA: sdpa's
    lower-right causal bias); sliding-window layers build a bool and a float mask of chunk x (window +
    chunk); layers with attention-logit softcapping (Gemma2) build the eager formula's chunk x T scores per
    head, two copies at a time, and softmax's float32 output. GQA K/V are repeated to every query head for
    softcapping, and on CUDA where sdpa's flash kernel cannot run (float32, a window)."""
    text, bytes_w, hidden, inter, heads, kv_heads, head_dim = _shape(config, dtype)
    q_len = min(chunk, length)
    step = layer_kv_bytes(config, length, dtype) + _layer_bytes(q_len, hidden, inter, bytes_w)
    window = getattr(text, "sliding_window", None)
    if window:
        step += _mask_bytes(q_len, min(length, window + q_len), bytes_w)
    softcap = getattr(text, "attn_logit_softcapping", None)
    if softcap:
        step += heads * q_len * length * (2 * bytes_w + 4) + q_len * length
    if kv_heads < heads and (softcap or cuda and (window or bytes_w == 4)):
        step += 2 * length * heads * head_dim * bytes_w
    final = q_len * hidden * bytes_w + head_bytes(config, length, dtype, head_rows)
    residual = length * hidden * bytes_w
    return int(n_params * bytes_w + RUNTIME_BYTES + residual + max(step, final))


def make_plan(config, length: int, *, dtype: str, attn: str, n_params: int, max_memory: int | None = None,
              chunk_size: int | None = None, strategy: str = "auto", stream_ok: bool | None = None,
              generation: bool = False, cuda: bool = False) -> Plan:
    """Single pass when it fits (or no budget is set), else layer-streamed scoring with the largest
    power-of-two query chunk (<= STREAM_MAX_CHUNK) that fits, where the family supports it, else the
    largest power-of-two prefill chunk that fits. `chunk_size` below the length forces prefill in that
    chunk (as --chunk-size does). `strategy` other than "auto" forces single / stream / prefill (with
    `chunk_size` as the chunk when given, else the largest that fits); `fits` tells whether it does.
    `stream_ok`: whether this model streams exactly (Engine.stream_exact); None = its model type is one
    `harness.engine.stream` supports (all a config tells).

    `generation`: the sequence is a prompt to generate after, so every estimate also counts the KV cache
    that stays for decoding (`kv_cache_bytes`; prefill's estimate holds it already): a single pass or a
    stream chunk is chosen only where it fits with the cache. Decoding needs no more than that: each step
    concatenates one layer's K/V one token longer at a time (DynamicLayer.update), the cache plus one
    layer, with no activations of the prompt's pass alive. On a CUDA device (`cuda`), a stream plan whose
    cache does not fit at any chunk offloads it (`offload=True`; the estimate counts
    `offloaded_cache_bytes` instead: decoding then holds ~3 layers on the device); `cuda` also counts the
    CUDA kernels' needs in a stream step (`_stream_bytes`). Without `generation` no cache is counted."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if stream_ok is None:
        stream_ok = stream.refusal(config) is None
    window = _layer_kinds(rope_config.text_config(config))[2]
    sizer = _Sizer(config, length, dtype, attn, n_params, max_memory, cuda, generation,
                   cache=kv_cache_bytes(config, length, dtype) if generation else 0,
                   streamed_cache=kv_cache_bytes(config, length, dtype, window) if generation else 0,
                   offloaded=offloaded_cache_bytes(config, length, dtype) if generation and cuda else None)
    if strategy == "single":
        return sizer.single_plan()
    if strategy == "stream":
        return _forced_stream(sizer, chunk_size, stream_ok)
    chunk_forces_prefill = chunk_size is not None and chunk_size < length  # --chunk-size under "auto"
    if strategy == "prefill" or chunk_forces_prefill:
        return _forced_prefill(sizer, chunk_size)
    return _auto(sizer, stream_ok)


@dataclass(frozen=True)
class _Sizer:
    """make_plan's candidate plans for one sequence, each priced by `estimate_bytes` and checked against
    the budget (`max_memory`; None: everything fits)."""

    config: Any
    length: int
    dtype: str
    attn: str
    n_params: int
    max_memory: int | None
    cuda: bool
    generation: bool  # a prompt to generate after: the head reads a teacher-forced answer, not every position
    cache: int  # the KV cache a generation prompt keeps on the device for decoding (0: not generating)
    streamed_cache: int  # the same after a streamed prefill (sliding layers: the window alone)
    offloaded: int | None  # what an offloading cache keeps on the device instead (None: cannot offload)

    def _estimate(self, chunk: int | None, kind: str | None = None) -> int:
        return estimate_bytes(self.config, self.length, chunk, self.dtype, self.attn, self.n_params, kind,
                              cuda=self.cuda, generation=self.generation)

    def _plan(self, strategy: str, chunk: int, need: int, offload: bool = False) -> Plan:
        return Plan(strategy, chunk, need, self.max_memory is None or need <= self.max_memory, offload)

    def single_plan(self) -> Plan:
        """One pass over all `length` tokens, the decoding cache on top."""
        return self._plan("single", self.length, self._estimate(None) + self.cache)

    def stream_plan(self, chunk: int, offload: bool) -> Plan:
        """Layer-streamed in `chunk`-token query chunks (at most the length), with the decoding cache on the
        device or, with `offload`, what the offloading cache keeps there."""
        chunk = min(chunk, self.length)
        held = self.offloaded if offload else self.streamed_cache
        return self._plan("stream", chunk, self._estimate(chunk, "stream") + held, offload)

    def prefill_plan(self, chunk: int) -> Plan:
        """Prefill through the KV cache in `chunk`-token pieces (its estimate holds the cache already)."""
        return self._plan("prefill", chunk, self._estimate(chunk))

    def smallest_prefill(self) -> Plan:
        """The last resort when no chunk fits: prefill in 64-token pieces, marked as not fitting."""
        return Plan("prefill", 64, self._estimate(64), fits=False)

    def largest_stream(self) -> Plan | None:
        """The largest power-of-two query chunk (<= STREAM_MAX_CHUNK) that fits with the cache on the device,
        else (where it can offload) the largest that fits with the cache offloaded; None when none fits."""
        for offload in (False, True) if self.offloaded is not None else (False,):
            for chunk in _halving_chunks(STREAM_MAX_CHUNK, self.length):
                plan = self.stream_plan(chunk, offload)
                if plan.fits:
                    return plan
        return None

    def largest_prefill(self) -> Plan | None:
        """The largest power-of-two prefill chunk (below the length, at least 64) that fits; None when none
        does."""
        for chunk in _halving_chunks(self.length, self.length):
            plan = self.prefill_plan(chunk)
            if plan.fits:
                return plan
        return None


def _halving_chunks(top: int, length: int) -> Iterator[int]:
    """Powers of two from the largest <= min(top, length - 1) down to 64 (just 64 for lengths up to 128)."""
    chunk = 1 << max(6, min(top, length - 1).bit_length() - 1)
    while chunk >= 64:
        yield chunk
        chunk //= 2


def _forced_stream(sizer: _Sizer, chunk_size: int | None, stream_ok: bool) -> Plan:
    """strategy "stream": refused for a model that does not stream exactly. A given chunk is kept (its cache
    offloaded where it does not fit on the device and can be); otherwise the largest chunk that fits, else
    64-token chunks (offloading where it can)."""
    if not stream_ok:
        raise ValueError("strategy stream: "
                         f"{stream.refusal(sizer.config) or 'this model does not stream exactly'}")
    if chunk_size is None:
        return sizer.largest_stream() or sizer.stream_plan(64, sizer.offloaded is not None)
    plan = sizer.stream_plan(chunk_size, False)
    if plan.fits or sizer.offloaded is None:
        return plan
    return sizer.stream_plan(plan.chunk, True)


def _forced_prefill(sizer: _Sizer, chunk_size: int | None) -> Plan:
    """strategy "prefill", or a `chunk_size` below the length: that chunk (at most the length), else the
    largest that fits, else the smallest."""
    if chunk_size is not None:
        return sizer.prefill_plan(min(chunk_size, sizer.length))
    return sizer.largest_prefill() or sizer.smallest_prefill()


def _auto(sizer: _Sizer, stream_ok: bool) -> Plan:
    """strategy "auto": a single pass when it fits, else the largest stream chunk that fits (where the model
    streams), else the largest prefill chunk that fits, else the smallest."""
    single = sizer.single_plan()
    if single.fits:
        return single
    if stream_ok:
        plan = sizer.largest_stream()
        if plan is not None:
            return plan
    return sizer.largest_prefill() or sizer.smallest_prefill()


BATCH_MAX = 64  # rows per forward, at most
# auto batching adds rows up to this many tokens a forward: past 64K one row fills a GPU; on CPU, 2K tokens
# (benchmarks/speed.py: 8 rows of 256 tokens 1.30x the throughput of one at a time, 8 rows of 1,024 0.91x)
BATCH_TOKENS = {"accelerator": 1 << 16, "cpu": 1 << 11}


def batch_rows(config, length: int, requested: int | str, *, dtype: str, attn: str, n_params: int,
               max_memory: int | None, generation: bool = False, accelerator: bool = False) -> int:
    """Rows of `length` tokens in one single-pass forward: `requested` (a number, or "auto": the most up to
    BATCH_MAX rows and BATCH_TOKENS tokens), lowered to what fits `max_memory` (`estimate_bytes` of that
    many rows, each with its KV cache for generation)."""
    if requested == "auto":
        tokens = BATCH_TOKENS["accelerator" if accelerator else "cpu"]
        requested = max(1, min(BATCH_MAX, tokens // max(length, 1)))
    rows = max(int(requested), 1)
    cache = kv_cache_bytes(config, length, dtype) if generation else 0

    def need(n: int) -> int:
        return estimate_bytes(config, length, None, dtype, attn, n_params, rows=n,
                              generation=generation) + n * cache

    while rows > 1 and max_memory is not None and need(rows) > max_memory:
        rows -= 1
    return rows


CPU_SHARE = 0.8  # of the memory available when the run starts: the default budget on CPU
CUDA_SHARE = 0.9  # of a CUDA card's total memory (a fixed property of the card: plans reproduce on it)


def default_budget(device: str) -> int:
    """The memory budget without --max-memory: CUDA_SHARE of a CUDA card's total memory, else CPU_SHARE of
    the memory available at the start of the run (memory_guard.available_at_start)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return int(CUDA_SHARE * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return int(CPU_SHARE * available_at_start())


def budget_source(device: str, max_memory: int | None) -> str:
    """Where the budget comes from, in words (the dry run prints it)."""
    if max_memory is not None:
        return "--max-memory"
    if str(device).startswith("cuda"):
        return f"{CUDA_SHARE:.0%} of the card's memory; --max-memory sets it"
    return f"{CPU_SHARE:.0%} of the memory available at start; --max-memory sets it"
