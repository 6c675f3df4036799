"""The planner's memory model: a pass peaks in its larger phase (decoder layer or output head); generation
prompts count the KV cache kept for decoding (on the device, or offloaded on CUDA when it does not fit), and
never change a scoring plan."""

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


# pinned plans and estimates (the memory model as benchmarks/memory.py validates it): a change to the model
# shows here; generation and offloading never change a scoring plan
SCORING = [
    ("tiny", 3000, {}, "single", 26777216, True),
    ("tiny", 3000, {"strategy": "stream"}, "stream:2048", 25266816, True),
    ("tiny", 3000, {"strategy": "prefill"}, "prefill:2048", 58290816, True),
    ("tiny", 32768, {"max_memory": 60_000_000}, "stream:4096", 47061632, True),
    ("tiny", 32768, {"max_memory": 20_000_000}, "prefill:64", 69810816, False),
    ("tiny", 32768, {"chunk_size": 512}, "prefill:512", 144644736, True),
    ("deep", 32768, {}, "single", 325989888, True),
    ("deep", 32768, {"strategy": "stream"}, "stream:4096", 126760448, True),
    ("deep", 32768, {"strategy": "prefill"}, "prefill:16384", 3706598912, True),
    ("deep", 3000, {"max_memory": 60_000_000}, "prefill:64", 155358720, False),
    ("deep", 3000, {"chunk_size": 512}, "prefill:512", 155588096, True),
]


def test_sdpa_prefill_counts_the_mask_not_per_head_scores():
    config, n_params = PARAMS["tiny"]
    eager = planner.estimate_bytes(config, 3000, 512, "float32", "eager", n_params)
    sdpa = planner.estimate_bytes(config, 3000, 512, "float32", "sdpa", n_params)
    # eager: 4 heads x (scores + float32 softmax) and a float mask per pair; sdpa: a bool and a float mask
    assert eager - sdpa == (4 * 8 + 4 - 5) * 512 * 3000
    single = planner.estimate_bytes(config, 3000, None, "float32", "sdpa", n_params)
    one_chunk = planner.estimate_bytes(config, 3000, 3000, "float32", "sdpa", n_params)
    layer = planner.kv_cache_bytes(config, 3000, "float32") // config.num_hidden_layers
    # the first chunk is causal without a mask: a single pass plus the cache (one layer twice)
    assert one_chunk == single + planner.kv_cache_bytes(config, 3000, "float32") + layer


def test_a_pass_peaks_in_its_larger_phase():
    """Decoder and output head never hold their activations at once: a longer pass grows the estimate only
    once the decoder's layer outweighs the head's sub-chunk (the deep model's 4K-vocabulary head)."""
    config, n_params = PARAMS["deep"]
    fixed = n_params * 4 + planner.RUNTIME_BYTES
    short, longer = (planner.estimate_bytes(config, n, None, "float32", "sdpa", n_params) - fixed
                     for n in (1024, 2048))
    head = planner.head_bytes(config, 2048)
    assert short - 1024 * 128 * 4 == longer - 2048 * 128 * 4 == head  # only the final hidden states grow
    big = planner.estimate_bytes(config, 32768, None, "float32", "sdpa", n_params) - fixed
    assert big == 32768 * (8 * 128 + 3 * 384) * 4  # the decoder's layer dominates
    assert planner.head_bytes(config, 2048, "bfloat16") == 1024 * 4096 * (2 + 4 + 4 + 1)


@pytest.mark.parametrize("name,length,kw,text,estimate,fits", SCORING)
def test_scoring_plans_are_unchanged(name, length, kw, text, estimate, fits):
    for extra in ({}, {"cuda": True}, {"generation": False}):  # offloading is a generation matter only
        if extra.get("cuda") and name == "tiny" and text.startswith("stream"):
            continue  # a GQA model's stream step on CUDA: test_cuda_float32_gqa_stream_counts_repeated_kv
        got = plan(name, length, **kw, **extra)
        assert (str(got), got.estimate_bytes, got.fits, got.offload) == (text, estimate, fits, False)


def test_cuda_float32_gqa_stream_counts_repeated_kv():
    """On CUDA sdpa runs GQA only in its flash kernel (half precision): in float32 the stream step repeats
    K/V to every query head (TINY: 4 heads over 2 kv heads of 16 dims)."""
    config, n_params = PARAMS["tiny"]
    cpu, cuda = (planner.estimate_bytes(config, 32768, 4096, "float32", "sdpa", n_params, "stream", cuda=c)
                 for c in (False, True))
    assert cuda - cpu == 2 * 32768 * 4 * 16 * 4
    half = [planner.estimate_bytes(config, 32768, 4096, "bfloat16", "sdpa", n_params, "stream", cuda=c)
            for c in (False, True)]
    assert half[0] == half[1]
    deep, deep_params = PARAMS["deep"]  # no GQA: nothing to repeat
    assert len({planner.estimate_bytes(deep, 32768, 4096, "float32", "sdpa", deep_params, "stream", cuda=c)
                for c in (False, True)}) == 1


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
        assert gen.estimate_bytes == score.estimate_bytes + added, strategy
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


def test_offload_only_on_cuda_and_when_the_cache_does_not_fit():
    length = 32768
    cache = planner.kv_cache_bytes(DEEP, length, "float32")
    offloaded = planner.offloaded_cache_bytes(DEEP, length, "float32")
    stream = plan("deep", length, strategy="stream")  # stream:4096
    on_device = stream.estimate_bytes + cache
    for ok in (False, True):  # the cache fits: on the device, on CUDA or not
        gen = plan("deep", length, max_memory=on_device, strategy="stream", generation=True, cuda=ok)
        assert (str(gen), gen.estimate_bytes) == ("stream:4096", on_device)
        assert plan("deep", length, max_memory=on_device, generation=True, cuda=ok) == gen
    # at no chunk with the cache (it alone fills the budget), but offloaded: the largest chunk, the on-device
    # share counted
    budget = cache
    gen = plan("deep", length, max_memory=budget, generation=True, cuda=True)
    assert (str(gen), gen.estimate_bytes, gen.fits) == ("stream:4096+offload",
                                                         stream.estimate_bytes + offloaded, True)
    assert plan("deep", length, max_memory=budget, generation=True, cuda=True) == gen  # pure
    no = plan("deep", length, max_memory=budget, generation=True)  # CPU: never offloaded
    assert not no.fits and not no.offload
    # a forced chunk offloads too when its cache does not fit
    forced = plan("deep", length, max_memory=budget, strategy="stream", chunk_size=2048, generation=True,
                  cuda=True)
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
    on_cuda = eng.plan(3000)  # its stream step also holds K/V repeated for CUDA's float32 GQA kernel
    assert gen.estimate_bytes == on_cuda.estimate_bytes + planner.offloaded_cache_bytes(eng.config, 3000,
                                                                                        eng.dtype)
    assert not eng.plan(3000).offload  # scoring keeps no cache


def test_a_sliding_window_needs_a_mask_per_kind_of_layer():
    """sdpa runs a single pass causal without a mask, unless a sliding window cuts into it; a model with
    sliding and full layers (Gemma2/3) builds one mask of each kind (benchmarks/memory.py, families table)."""
    base = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                num_attention_heads=8, num_key_value_heads=8)
    full = transformers.MistralConfig(**base, sliding_window=None)
    window = transformers.MistralConfig(**base, sliding_window=512)
    mixed = transformers.MistralConfig(**base, sliding_window=512,
                                       layer_types=["sliding_attention", "full_attention"])

    def single(config, length):
        return planner.estimate_bytes(config, length, None, "float32", "sdpa", 0)

    assert single(window, 512) == single(full, 512)  # the window holds the whole sequence: causal alone
    mask = 4096 * 4096 * (1 + 4)
    assert single(window, 4096) - single(full, 4096) == mask
    assert single(mixed, 4096) - single(full, 4096) == 2 * mask
