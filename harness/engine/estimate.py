"""How long a run will take, before it runs: the planner's work in FLOPs over a throughput measured on this
machine (an estimate, and the dry run says so).

Work: a pass over T tokens costs the decoder's matmuls (2 x the layer weights per token), causal attention
(2 x layers x T^2 x attention width: QK^T and AV, half of the square each) and the output head on every
position; a greedy step after it costs one token's matmuls and its attention over the T cached tokens.
Throughput: a calibration pass of a small Llama on this machine (its FLOPs per second in a long pass, its
seconds per greedy step per parameter), measured once and cached beside the dequantised GGUF folders, keyed
by the processor, the torch version, its threads and the dtype.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.model import rope_config

CALIBRATION_TOKENS = 1024  # the calibration pass: long enough that attention and matmuls both count
CALIBRATION_STEPS = 8


@dataclass(frozen=True)
class Throughput:
    flops_per_s: float  # a long pass's FLOPs per second
    step_s_per_param: float  # a greedy step's seconds per model parameter (memory-bound on CPU)


def pass_flops(config: Any, tokens: int) -> float:
    """FLOPs of one forward over `tokens` tokens (the head on every position)."""
    text = rope_config.text_config(config)
    hidden, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    inter = getattr(text, "intermediate_size", None) or 4 * hidden
    per_token = 2 * (2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim + 3 * hidden * inter)
    attention = 2 * layers * tokens * tokens * heads * head_dim
    return tokens * (layers * per_token + 2 * hidden * vocab) + attention


def step_flops(config: Any, context: int) -> float:
    """The attention FLOPs of one greedy step over `context` cached tokens (its matmuls are timed per
    parameter: a step is memory-bound)."""
    text = rope_config.text_config(config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 4 * text.num_hidden_layers * context * text.num_attention_heads * head_dim


def seconds(config: Any, n_params: int, passes: list[tuple[int, int]], speed: Throughput) -> float:
    """Estimated seconds of `passes`, each (tokens, greedy steps after it)."""
    total = 0.0
    for tokens, steps in passes:
        total += pass_flops(config, tokens) / speed.flops_per_s
        total += steps * (n_params * speed.step_s_per_param + step_flops(config, tokens) / speed.flops_per_s)
    return total


def throughput(dtype: str, cache: Path) -> Throughput:
    """This machine's throughput for `dtype`, from the cache or measured now (a few seconds, once)."""
    import torch

    machine = platform.processor() or platform.machine()
    key = f"{machine}|torch {torch.__version__}|{torch.get_num_threads()} threads|{dtype}"
    path = cache / "calibration.json"
    known = _read(path)
    if key not in known:
        known[key] = asdict(_measure(dtype))
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f"{path.name}.{os.getpid()}")
        scratch.write_text(json.dumps(known, indent=1))
        os.replace(scratch, path)
    return Throughput(**known[key])


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _measure(dtype: str) -> Throughput:
    """Time a small random Llama: one long pass, then greedy steps on its cache."""
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    ids = torch.randint(0, config.vocab_size, (1, CALIBRATION_TOKENS))
    n_params = sum(p.numel() for p in model.parameters())
    # transformers 5.24 renamed past_key_values to cache (5.23 knows only the old name)
    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        model(input_ids=ids[:, :64])  # warm-up
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        long_pass = time.perf_counter() - start
        cache = DynamicCache(config=config)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: cache})
        start = time.perf_counter()
        for _ in range(CALIBRATION_STEPS):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), use_cache=True, logits_to_keep=1,
                        **{kw: cache})
        step = (time.perf_counter() - start) / CALIBRATION_STEPS
    speed = pass_flops(config, CALIBRATION_TOKENS) / long_pass
    attention = step_flops(config, CALIBRATION_TOKENS) / speed
    return Throughput(speed, max(step - attention, 1e-9) / n_params)
