"""The planner's memory model for generation prompts: the KV cache kept for decoding is counted (on the
device, or offloaded on CUDA when it does not fit), and every scoring plan and estimate stays as it was."""

import pytest
import torch
import transformers
from tiny import make_tiny

from harness import engine, models, planner
from harness.planner import Plan

# configs only (no model is built): the tiny test Llama's shape and the memory benchmark's deep MHA one
TINY = transformers.LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
DEEP = transformers.LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=24,
                                num_attention_heads=2, num_key_value_heads=2)
PARAMS = {"tiny": (TINY, 100_000), "deep": (DEEP, 6_000_000)}


def plan(name, length, **kw):
    config, n_params = PARAMS[name]
    return planner.make_plan(config, length, dtype="float32", attn="sdpa", n_params=n_params, **kw)


# computed before generation/offload existed: scoring plans must stay byte-identical (the prefill rows of the
# 4-head model: after the sdpa mask replaced heads x q x kv scores in the prefill estimate)
SCORING = [
    ("tiny", 3000, {}, "single", 13950592, True),
    ("tiny", 3000, {"strategy": "stream"}, "stream:2048", 19518080, True),
    ("tiny", 3000, {"strategy": "prefill"}, "prefill:2048", 61592192, True),
    ("tiny", 32768, {"max_memory": 60_000_000}, "stream:4096", 56011392, True),
    ("tiny", 32768, {"max_memory": 20_000_000}, "prefill:64", 45730432, False),
    ("tiny", 32768, {"chunk_size": 512}, "prefill:512", 164604544, True),
    ("deep", 32768, {}, "single", 376321536, True),
    ("deep", 32768, {"strategy": "stream"}, "stream:4096", 214840832, True),
    ("deep", 32768, {"strategy": "prefill"}, "prefill:16384", 5333988864, True),
    ("deep", 3000, {"max_memory": 60_000_000}, "prefill:64", 151688704, False),
    ("deep", 3000, {"chunk_size": 512}, "prefill:512", 166340096, True),
]


def test_sdpa_prefill_counts_the_mask_not_per_head_scores():
    config, n_params = PARAMS["tiny"]
    eager = planner.estimate_bytes(config, 3000, 512, "float32", "eager", n_params)
    sdpa = planner.estimate_bytes(config, 3000, 512, "float32", "sdpa", n_params)
    assert eager - sdpa == (4 * 4 - 8) * 512 * 3000  # eager: 4 heads x 4 bytes of scores per pair; sdpa: 8
    single = planner.estimate_bytes(config, 3000, None, "float32", "sdpa", n_params)
    one_chunk = planner.estimate_bytes(config, 3000, 3000, "float32", "sdpa", n_params)
    assert one_chunk == single + planner.kv_cache_bytes(config, 3000, "float32") + 8 * 3000 * 3000


@pytest.mark.parametrize("name,length,kw,text,estimate,fits", SCORING)
def test_scoring_plans_are_unchanged(name, length, kw, text, estimate, fits):
    for extra in ({}, {"offload_ok": True}):  # offloading is a generation matter only
        got = plan(name, length, **kw, **extra)
        assert (str(got), got.estimate_bytes, got.fits, got.offload) == (text, estimate, fits, False)


def decode_floor(name, length):
    """Weights + twice the cache: decoding reallocates every layer's K/V one token longer per step."""
    config, n_params = PARAMS[name]
    return n_params * 4 + 2 * planner.kv_cache_bytes(config, length, "float32")


@pytest.mark.parametrize("name", list(PARAMS))
def test_generation_estimates_add_the_cache(name):
    config, _ = PARAMS[name]
    length = 8192
    cache = planner.kv_cache_bytes(config, length, "float32")
    for strategy, chunk in (("single", None), ("stream", 1024), ("prefill", 1024)):
        score = plan(name, length, strategy=strategy, chunk_size=chunk)
        gen = plan(name, length, strategy=strategy, chunk_size=chunk, generation=True)
        assert (gen.strategy, gen.chunk, gen.offload) == (score.strategy, score.chunk, False)
        added = 0 if strategy == "prefill" else cache  # prefill's estimate holds its cache already
        assert gen.estimate_bytes == max(score.estimate_bytes + added, decode_floor(name, length)), strategy
        if name == "tiny":  # the pass dominates: exactly the cache on top
            assert gen.estimate_bytes == score.estimate_bytes + added
    assert planner.offloaded_cache_bytes(config, length, "float32") * config.num_hidden_layers == 2 * cache


def test_single_is_not_chosen_for_generation_when_the_cache_does_not_fit():
    length = 32768
    single = plan("tiny", length)
    cache = planner.kv_cache_bytes(TINY, length, "float32")
    budget = single.estimate_bytes + cache - 1
    assert str(plan("tiny", length, max_memory=budget)) == "single"
    gen = plan("tiny", length, max_memory=budget, generation=True)
    assert gen.strategy == "stream" and gen.fits and not gen.offload
    assert gen.estimate_bytes <= budget
    stream = plan("tiny", length, strategy="stream", chunk_size=gen.chunk)
    assert gen.estimate_bytes == stream.estimate_bytes + cache
    assert str(plan("tiny", length, max_memory=budget + 1, generation=True)) == "single"


def test_offload_only_with_offload_ok_and_when_the_cache_does_not_fit():
    length = 32768
    offloaded = planner.offloaded_cache_bytes(DEEP, length, "float32")
    stream = plan("deep", length, strategy="stream")  # stream:4096
    floor = decode_floor("deep", length)  # 24 layers x 32K: decoding's two caches dominate every pass
    assert floor > stream.estimate_bytes + planner.kv_cache_bytes(DEEP, length, "float32")
    for ok in (False, True):  # the cache fits: on the device, offload_ok or not
        gen = plan("deep", length, max_memory=floor, strategy="stream", generation=True, offload_ok=ok)
        assert (str(gen), gen.estimate_bytes) == ("stream:4096", floor)
        assert str(plan("deep", length, max_memory=floor, generation=True, offload_ok=ok)) == "single"
    # at no chunk with the cache, but offloaded: the largest chunk, the on-device share counted
    budget = floor - 1
    gen = plan("deep", length, max_memory=budget, generation=True, offload_ok=True)
    assert (str(gen), gen.estimate_bytes, gen.fits) == ("stream:4096+offload",
                                                         stream.estimate_bytes + offloaded, True)
    assert plan("deep", length, max_memory=budget, generation=True, offload_ok=True) == gen  # pure
    no = plan("deep", length, max_memory=budget, generation=True)  # CPU: never offloaded
    assert not no.fits and not no.offload
    # a forced chunk offloads too when its cache does not fit
    forced = plan("deep", length, max_memory=budget, strategy="stream", chunk_size=2048, generation=True,
                  offload_ok=True)
    assert str(forced) == "stream:2048+offload" and forced.fits
    assert str(Plan("stream", 2048, 0)) == "stream:2048"


def test_prefill_uses_the_generation_plan(tiny_llama, monkeypatch):
    """A budget where scoring runs a single pass but the prompt's cache does not fit beside it: the prompt
    is layer-streamed into a cache on the device (CPU), and the tokens equal an unbudgeted generation."""
    loaded = models.load(str(tiny_llama))
    prompt = torch.randint(0, 256, (3000,), generator=torch.Generator().manual_seed(3)).tolist()
    eng = engine.Engine(loaded)
    want = eng.generate(prompt, 4)
    single = eng.plan(3000).estimate_bytes
    eng.max_memory = single - 1
    scoring = eng.plan(3000)
    assert scoring.strategy == "stream"
    cache = planner.kv_cache_bytes(eng.config, 3000, eng.dtype)
    eng.max_memory = scoring.estimate_bytes + cache
    gen = eng.plan(3000, generation=True)
    assert gen == Plan("stream", scoring.chunk, scoring.estimate_bytes + cache)
    offloads = []
    real = eng._new_cache
    monkeypatch.setattr(eng, "_new_cache", lambda offload=False: offloads.append(offload) or real())
    assert eng.generate(prompt, 4) == want
    assert offloads == [False]
    # the engine asks for the generation plan and takes its offload decision from it
    monkeypatch.setattr(eng, "plan", lambda length, strategy=None, generation=False:
                        Plan("stream", 1024, 0, offload=generation))
    assert eng.generate(prompt, 4) == want
    assert offloads == [False, True]


def test_engine_offloads_only_on_cuda(tmp_path):
    """The decision only (no cache is built): a 6-layer model, where two layers' K/V are a third of all."""
    eng = engine.Engine(models.load(str(make_tiny(tmp_path / "six", num_hidden_layers=6))), strategy="stream",
                        chunk_size=64)
    stream = eng.plan(3000)
    eng.max_memory = stream.estimate_bytes + planner.kv_cache_bytes(eng.config, 3000, eng.dtype) - 1
    assert not eng.plan(3000, generation=True).offload  # CPU: never
    eng.device = torch.device("cuda")
    gen = eng.plan(3000, generation=True)
    assert str(gen) == "stream:64+offload" and gen.fits
    assert gen.estimate_bytes == stream.estimate_bytes + planner.offloaded_cache_bytes(eng.config, 3000,
                                                                                       eng.dtype)
    assert not eng.plan(3000).offload  # scoring keeps no cache
