"""Layer-streamed scoring equals a plain full forward (relative 1e-5, float32) for every family it supports;
the planner picks it only where it fits and is exact; score_and_generate equals the two verbs it merges."""

import pytest
import torch
import torch.nn.functional as F
from tiny import make_tiny

from harness.engine import engine, planner, stream
from harness.model import models
from harness.model.rope_config import RopeOverride

# family variants: (tiny family, config extras). Windows are smaller than the 301 tokens scored, so sliding
# layers are exercised; the chunk (64) is smaller still, so queries attend across several chunks.
VARIANTS = {
    "llama": ("llama", {}),  # GQA: 4 heads, 2 kv heads
    "mistral-window": ("mistral", {"sliding_window": 48}),
    "qwen2-window": ("qwen2", {"use_sliding_window": True, "sliding_window": 48, "max_window_layers": 1}),
    "qwen3": ("qwen3", {}),  # q/k norms
    "gemma": ("gemma", {}),  # embedding scale, (1 + w) norms
    # sliding window 64, attention and final logit softcapping, query_pre_attn_scalar
    "gemma2": ("gemma2", {}),
    # sliding + full layers, per-layer-type RoPE, q/k norms
    "gemma3": ("gemma3", {"query_pre_attn_scalar": 24}),
    "phi3": ("phi3", {}),  # fused qkv
    "gpt_neox": ("gpt_neox", {}),  # partial rotary, parallel residual
    "gpt_neox-sequential": ("gpt_neox", {"use_parallel_residual": False}),
}
CHUNK = 64


def ids_of(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def plain_nll(path, override, ids):
    """Reference: a freshly loaded model, one plain forward, full logits."""
    model = models.load(str(path), override).model
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")


def assert_same(nll, ref, what):
    rel = float(((nll - ref).abs() / ref.abs()).max())
    assert torch.allclose(nll, ref, rtol=1e-5, atol=1e-5), (what, rel)
    assert abs(nll.double().mean() / ref.double().mean() - 1) < 1e-5, what


@pytest.fixture(scope="module")
def variant_dirs(tmp_path_factory):
    return {name: make_tiny(tmp_path_factory.mktemp(name), family, **extra)
            for name, (family, extra) in VARIANTS.items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stream_matches_plain_forward(variant, variant_dirs):
    ids = ids_of(301)
    override = RopeOverride(theta=5e4)
    eng = engine.Engine(models.load(str(variant_dirs[variant]), override), strategy="stream",
                        chunk_size=CHUNK)
    assert eng.stream_exact and str(eng.plan(len(ids))) == f"stream:{CHUNK}"
    assert_same(eng.token_nll(ids), plain_nll(variant_dirs[variant], override, ids), variant)


def test_sdpa_lower_right_path_matches_plain_forward(variant_dirs, monkeypatch):
    """Without the CPU kernel's log-sum-exp (CUDA, old torch), full layers run sdpa with the lower-right
    causal bias: the same numbers."""
    monkeypatch.setattr(stream, "_CPU_FLASH", None)
    ids = ids_of(301)
    for variant in ("llama", "gemma3"):
        eng = engine.Engine(models.load(str(variant_dirs[variant])), strategy="stream", chunk_size=CHUNK)
        assert_same(eng.token_nll(ids), plain_nll(variant_dirs[variant], RopeOverride(), ids), variant)


def test_the_sliding_window_binds(variant_dirs, tmp_path):
    """Without the window the numbers differ: the window tests above are not vacuous."""
    ids = ids_of(301)
    windowed = engine.Engine(models.load(str(variant_dirs["mistral-window"])), strategy="stream",
                             chunk_size=CHUNK)
    full = engine.Engine(models.load(str(make_tiny(tmp_path / "m", "mistral"))), strategy="stream",
                         chunk_size=CHUNK)
    assert not torch.allclose(windowed.token_nll(ids), full.token_nll(ids), rtol=1e-3)


def test_length_dependent_rope_is_fixed_per_length(tiny_llama, tmp_path):
    """Dynamic NTK past max_position_embeddings (128) and LongRoPE across its switch (64): each length equals
    a fresh model's plain forward of exactly those tokens."""
    ids = ids_of(400, seed=3)
    dynamic = RopeOverride(rope_type="dynamic", factor=4)
    eng = engine.Engine(models.load(str(tiny_llama), dynamic), strategy="stream", chunk_size=CHUNK)
    for length in (400, 150):
        assert_same(eng.token_nll(ids[:length]), plain_nll(tiny_llama, dynamic, ids[:length]),
                    ("dynamic", length))
    path = make_tiny(tmp_path / "phi3", "phi3")
    longrope = RopeOverride(rope_type="longrope", params={
        "short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [2.0 + 0.5 * i for i in range(8)]})
    eng = engine.Engine(models.load(str(path), longrope), strategy="stream", chunk_size=40)
    for length in (300, 50, 65):
        assert_same(eng.token_nll(ids[:length]), plain_nll(path, longrope, ids[:length]),
                    ("longrope", length))


# ------------------------------------------------------------------------------------------ planner


def test_planner_picks_stream_when_single_does_not_fit(tiny_llama):
    loaded = models.load(str(tiny_llama))
    ids = ids_of(3000, seed=1)
    single = engine.Engine(loaded).plan(len(ids))
    assert str(single) == "single"
    eng = engine.Engine(loaded, max_memory=single.estimate_bytes - 1)
    plan = eng.plan(len(ids))
    assert plan.strategy == "stream" and plan.fits and plan.estimate_bytes <= eng.max_memory
    assert str(plan) == f"stream:{plan.chunk}" and plan.chunk < len(ids)
    # a pure function of config, length, dtype and budget: the same plan without a model
    again = planner.make_plan(eng.config, len(ids), dtype=eng.dtype, attn=eng.attn, n_params=eng.n_params,
                             max_memory=eng.max_memory)
    assert again == plan
    scored = eng.token_nll_batch([ids])
    assert scored.ran[0].plan == str(plan)  # what ran is the plan
    assert torch.allclose(scored.values[0], engine.Engine(loaded).token_nll(ids), rtol=1e-5, atol=1e-5)


def test_stream_estimate_does_not_grow_with_layers(tiny_llama):
    config = models.load(str(tiny_llama)).config
    deep = type(config)(**{**config.to_dict(), "num_hidden_layers": 24})
    for kind in ("stream", None):
        est = [planner.estimate_bytes(c, 32768, 1024, "float32", "sdpa", 0, kind) for c in (config, deep)]
        assert (est[0] == est[1]) == (kind == "stream"), kind  # prefill's cache holds every layer


def test_forced_strategy_is_honoured(tiny_llama):
    loaded = models.load(str(tiny_llama))
    ids = ids_of(301)
    ref = engine.Engine(loaded).token_nll(ids)
    forced = {"stream": "stream:256", "prefill": "prefill:256", "single": "single"}
    for strategy, want in forced.items():
        eng = engine.Engine(loaded, strategy=strategy)
        assert str(eng.plan(len(ids))) == want
        assert torch.allclose(eng.token_nll(ids), ref, rtol=1e-5, atol=1e-5), strategy
    assert str(engine.Engine(loaded, strategy="stream", chunk_size=77).plan(301)) == "stream:77"
    # auto + a chunk below the length: prefill in that chunk
    assert str(engine.Engine(loaded, chunk_size=77).plan(301)) == "prefill:77"
    tight = engine.Engine(loaded, strategy="single", max_memory=1000)
    assert str(tight.plan(301)) == "single" and not tight.plan(301).fits
    with pytest.raises(ValueError, match="unknown strategy"):
        engine.Engine(loaded, strategy="fast")


def test_unsupported_family_is_refused(tmp_path):
    """HyperCLOVAX scales its embeddings in the model forward: not in the table, never streamed."""
    path = make_tiny(tmp_path / "hcx", "hyperclovax")
    loaded = models.load(str(path))
    eng = engine.Engine(loaded)
    assert not eng.stream_exact and "hyperclovax" in eng.stream_refusal
    tight = engine.Engine(loaded, max_memory=eng.plan(3000).estimate_bytes - 1)
    assert tight.plan(3000).strategy == "prefill"  # the planner never picks stream for it
    with pytest.raises(RuntimeError, match="layer-streamed scoring .* is refused"):
        engine.Engine(loaded, strategy="stream")
    with pytest.raises(ValueError, match="strategy stream"):
        planner.make_plan(loaded.config, 3000, dtype="float32", attn="sdpa", n_params=1, strategy="stream")


def test_self_check_refuses_a_family_the_pass_does_not_reproduce(tmp_path, monkeypatch):
    """Listed by mistake, HyperCLOVAX's multipliers make the stream pass wrong: the self-check catches it."""
    monkeypatch.setitem(stream.SUPPORTED, "hyperclovax", stream.Family())
    loaded = models.load(str(make_tiny(tmp_path / "hcx", "hyperclovax")))
    eng = engine.Engine(loaded)
    assert not eng.stream_exact and "does not reproduce" in eng.stream_refusal
    with pytest.raises(RuntimeError, match="does not reproduce"):
        eng.token_nll(ids_of(40), planner.Plan("stream", 16, 0))


# ------------------------------------------------------------------------------- score_and_generate


def separate(eng, prompt, answer, new_tokens, stop=()):
    return eng.answer_score(prompt, answer), eng.generate(prompt, new_tokens, stop)


def assert_scores_equal(got, want):
    assert got.logprob == pytest.approx(want.logprob, rel=1e-5, abs=1e-5)
    assert got.token_logprobs == pytest.approx(want.token_logprobs, rel=1e-5, abs=1e-5)
    assert got.rank == want.rank


@pytest.mark.parametrize("variant", ["llama", "gemma2", "gemma3"])
def test_score_and_generate_equals_the_two_verbs(variant, variant_dirs):
    """Gemma2/3: the prompt is longer than the sliding window (64), so the crop must restore sliding
    layers."""
    loaded = models.load(str(variant_dirs[variant]))
    prompt, answer = ids_of(200, seed=2), ids_of(7, seed=5)
    for chunk in (None, 64):  # one prefill pass, and chunked prefill
        eng = engine.Engine(loaded, chunk_size=chunk)
        want_score, want_tokens = separate(eng, prompt, answer, 8)
        score, tokens = eng.score_and_generate(prompt, answer, 8)
        assert_scores_equal(score, want_score)
        assert tokens == want_tokens, (variant, chunk)
        one, tokens = eng.score_and_generate(prompt, answer[:1], 8)  # a one-token answer
        assert_scores_equal(one, eng.answer_score(prompt, answer[:1]))
        assert tokens == want_tokens


def decoder_tokens(eng, call):
    """(input lengths of every decoder call made during `call()`, its result): counts what was prefilled."""
    seen: list[int] = []
    hook = eng.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        result = call()
    finally:
        hook.remove()
    return seen, result


def test_score_and_generate_prefills_once(tiny_llama):
    eng = engine.Engine(models.load(str(tiny_llama)))
    prompt, answer = ids_of(200, seed=2), ids_of(5, seed=5)
    seen, (_, tokens) = decoder_tokens(eng, lambda: eng.score_and_generate(prompt, answer, 4))
    # prompt once, answer, one per new token
    assert sum(seen) == len(prompt) + len(answer) - 1 + len(tokens) - 1


def test_score_and_generate_stops_and_handles_length_dependent_rope(tiny_llama):
    prompt, answer = ids_of(200, seed=2), ids_of(5, seed=5)
    eng = engine.Engine(models.load(str(tiny_llama)))
    free = eng.generate(prompt, 8)
    stop = (free[2],)
    want_score, want_tokens = separate(eng, prompt, answer, 8, stop)
    score, tokens = eng.score_and_generate(prompt, answer, 8, stop)
    assert tokens == want_tokens and tokens[-1] == free[2] and len(tokens) <= 3
    assert_scores_equal(score, want_score)
    dynamic = engine.Engine(models.load(str(tiny_llama), RopeOverride(rope_type="dynamic", factor=4)))
    want_score, want_tokens = separate(dynamic, prompt, answer, 4)
    score, tokens = dynamic.score_and_generate(prompt, answer, 4)
    assert tokens == want_tokens
    assert_scores_equal(score, want_score)


def test_run_strategy_flag_reaches_the_plan_of_every_record(tiny_llama, text_corpus, tmp_path):
    """`--strategy stream` is recorded in each record's plan, and its ppl equals the default plan's."""
    import json

    from harness.cli import main

    runs = {}
    for strategy in ("auto", "stream"):
        out = tmp_path / strategy
        assert main(["run", "--model", str(tiny_llama), "--lengths", "64,128", "--samples", "1", "--corpus",
                     str(text_corpus), "--out", str(out), "--strategy", strategy, "--no-progress",
                     "--no-report"]) == 0
        runs[strategy] = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["plan"].split(":")[0] for r in runs["auto"]} == {"single"}
    assert {r["plan"].split(":")[0] for r in runs["stream"]} == {"stream"}
    for a, b in zip(runs["auto"], runs["stream"], strict=True):
        assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-5)


# ------------------------------------------------------------------------- generation after a streamed prompt


@pytest.mark.parametrize("variant", ["llama", "gemma2", "gemma3"])
def test_generation_after_a_streamed_prompt_equals_prefill(variant, variant_dirs, monkeypatch):
    """Strategy stream prefills the prompt layer by layer into the cache; the greedy tokens and the
    teacher-forced answer from it equal those after a chunked prefill (Gemma2/3: prompt > sliding window)."""
    loaded = models.load(str(variant_dirs[variant]))
    prompt, answer = ids_of(200, seed=2), ids_of(7, seed=5)
    ref = engine.Engine(loaded, strategy="prefill", chunk_size=CHUNK)
    eng = engine.Engine(loaded, strategy="stream", chunk_size=CHUNK)
    assert eng.plan(len(prompt)).strategy == "stream" and ref.plan(len(prompt)).strategy == "prefill"
    calls = []
    real = stream.prefill
    monkeypatch.setattr(stream, "prefill", lambda *a: calls.append(a[1].numel()) or real(*a))
    want_tokens = ref.generate(prompt, 8)
    assert not calls
    assert eng.generate(prompt, 8) == want_tokens
    assert calls == [len(prompt)]
    want_score, tokens = ref.score_and_generate(prompt, answer, 8)
    assert tokens == want_tokens
    seen, (score, tokens) = decoder_tokens(eng, lambda: eng.score_and_generate(prompt, answer, 8))
    assert calls == [len(prompt)] * 2 and sum(seen) == len(answer) - 1 + len(tokens) - 1  # prompt streamed
    assert tokens == want_tokens
    assert_scores_equal(score, want_score)
    assert_scores_equal(score, ref.answer_score(prompt, answer))
    one, tokens = eng.score_and_generate(prompt, answer[:1], 8)
    assert tokens == want_tokens
    assert_scores_equal(one, ref.answer_score(prompt, answer[:1]))


@pytest.mark.parametrize("variant", ["gemma2", "gemma3"])
def test_a_streamed_prefill_leaves_sliding_layers_holding_their_window_only(variant, variant_dirs):
    """The cache the planner prices (`kv_cache_bytes` with the window): a sliding layer keeps window - 1
    positions in storage of its own, not a view of the whole prompt's K/V; full layers keep every position."""
    from transformers import DynamicCache

    loaded = models.load(str(variant_dirs[variant]))
    prompt = torch.tensor(ids_of(200, seed=2))
    cache = DynamicCache(config=loaded.model.config)
    with torch.no_grad():
        stream.prefill(loaded.model, prompt, CHUNK, cache)
    window = loaded.model.config.sliding_window
    kept = {layer.is_sliding: layer.keys.untyped_storage().nbytes() // layer.keys[..., :1, :].numel()
            // layer.keys.element_size() for layer in cache.layers}
    assert kept == {True: window - 1, False: len(prompt)}


def test_generation_after_a_streamed_prompt_with_length_dependent_rope(tiny_llama):
    """Dynamic NTK past max_position_embeddings (128): RoPE fixed at the prompt length for both paths."""
    loaded = models.load(str(tiny_llama), RopeOverride(rope_type="dynamic", factor=4))
    prompt = ids_of(200, seed=2)
    want = engine.Engine(loaded, strategy="prefill", chunk_size=CHUNK).generate(prompt, 6)
    assert engine.Engine(loaded, strategy="stream", chunk_size=CHUNK).generate(prompt, 6) == want
