"""The engine equals a plain full forward (relative 1e-5, float32) for every family and rope type."""

import pytest
import torch
import torch.nn.functional as F
from tiny import FAMILIES, OVERRIDES, make_tiny

from harness.engine import engine, prefix_cache
from harness.model import models, rope_config


def plain_nll(path, override, ids):
    """Reference: a freshly loaded model, one plain forward, full logits."""
    model = models.load(str(path), override).model
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")


def ids_of(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return {name: make_tiny(tmp_path_factory.mktemp(name), name) for name in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_matches_plain_forward(family, family_dirs):
    ids = ids_of(301)
    override = rope_config.RopeOverride(theta=5e4)
    ref = plain_nll(family_dirs[family], override, ids)
    loaded = models.load(str(family_dirs[family]), override)
    for chunk in (None, 77):  # single pass, and chunked prefill with a chunk not dividing the length
        nll = engine.Engine(loaded, chunk_size=chunk).token_nll(ids)
        assert torch.allclose(nll, ref, rtol=1e-5, atol=1e-5), (family, chunk)
        assert abs(nll.double().mean() / ref.double().mean() - 1) < 1e-5


def test_unknown_logit_post_processing_is_refused(family_dirs, monkeypatch):
    """The engine re-implements each family's logit scaling: a family it does not know must fail loudly."""
    loaded = models.load(str(family_dirs["gemma2"]))  # final logit softcapping
    monkeypatch.setattr(engine, "postprocess_logits", lambda config, logits: logits)
    with pytest.raises(RuntimeError, match="does not reproduce the model's logits"):
        engine.Engine(loaded)


def test_prefill_that_loses_state_is_refused_not_wrong(tmp_path):
    """Bamba's Mamba layers ignore the cached state on a multi-token chunk: prefill would be silently
    wrong."""
    path = make_tiny(tmp_path / "bamba", "bamba")
    ids = ids_of(60)
    ref = plain_nll(path, rope_config.RopeOverride(), ids)
    loaded = models.load(str(path))
    assert torch.allclose(engine.Engine(loaded).token_nll(ids), ref, rtol=1e-5, atol=1e-5)
    chunked = engine.Engine(loaded, chunk_size=16)
    with pytest.raises(RuntimeError, match="chunked prefill"):
        chunked.token_nll(ids)
    with pytest.raises(RuntimeError, match="chunked prefill"):
        chunked.generate(ids, 2)


@pytest.mark.parametrize("kind", list(OVERRIDES))
def test_every_rope_type_matches_plain_forward_past_max_positions(kind, tiny_llama):
    ids = ids_of(400)  # max_position_embeddings is 128
    loaded = models.load(str(tiny_llama), OVERRIDES[kind])
    ref = plain_nll(tiny_llama, OVERRIDES[kind], ids)
    for chunk in (None, 33, 128):
        nll = engine.Engine(loaded, chunk_size=chunk).token_nll(ids)
        assert torch.allclose(nll, ref, rtol=1e-5, atol=1e-5), (kind, chunk)


def test_dynamic_lengths_in_any_order_equal_fresh_models(tiny_llama):
    """transformers' dynamic NTK is stateful; the engine must not be."""
    override = OVERRIDES["dynamic"]
    eng = engine.Engine(models.load(str(tiny_llama), override))
    ids = ids_of(600, seed=3)
    for length in (600, 200, 450, 129, 600):
        ref = plain_nll(tiny_llama, override, ids[:length])
        assert torch.allclose(eng.token_nll(ids[:length]), ref, rtol=1e-5, atol=1e-5), length


def test_dynamic_needs_one_pass_per_length(tiny_llama):
    """A prefix of a long dynamic pass is NOT the short-length number (why ppl@L runs one pass per L)."""
    eng = engine.Engine(models.load(str(tiny_llama), OVERRIDES["dynamic"]))
    ids = ids_of(600, seed=3)
    assert not torch.allclose(eng.token_nll(ids)[:199], eng.token_nll(ids[:200]), rtol=1e-4)


def test_answer_score_and_rank(tiny_llama):
    eng = engine.Engine(models.load(str(tiny_llama)))
    ids = ids_of(300, seed=1)
    ref = plain_nll(tiny_llama, rope_config.RopeOverride(), ids)
    score = eng.answer_score(ids[:250], ids[250:255])
    assert score.logprob == pytest.approx(-float(ref[249:254].sum()), rel=1e-5)
    model = models.load(str(tiny_llama)).model
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    ranks = [int((logits[t] > logits[t, ids[t + 1]]).sum()) + 1 for t in range(249, 254)]
    assert score.rank == max(ranks)


def test_generate_equals_plain_greedy(tiny_llama):
    loaded = models.load(str(tiny_llama))
    prompt = ids_of(200, seed=2)
    model = loaded.model
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=258,
                              eos_token_id=None)[0, 200:].tolist()
    for chunk in (None, 64):
        assert engine.Engine(loaded, chunk_size=chunk).generate(prompt, 6) == want


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_greedy_steps_write_in_place_and_hand_back_the_same_cache_as_growing_it(family, family_dirs):
    """Full layers decode into a preallocated buffer; a sliding layer (Gemma3, window 64 < the prompt) keeps
    its own window; the tokens and the cache handed back equal those of a cache grown by concatenation."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer

    from harness.engine import decode

    eng = engine.Engine(models.load(str(family_dirs[family])))
    model, kw = eng.model, eng.cache_kw
    prompt = torch.tensor([ids_of(120, seed=3)])
    seen: list[list] = []

    def record(module, args, kwargs):
        seen.append([type(layer) for layer in kwargs[kw].layers])

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    runs = []
    with torch.no_grad():
        for steps in (decode.greedy, decode._greedy):  # preallocated, and the cache grown by concatenation
            cache = decode.new_cache(model)
            out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **{kw: cache})
            handed = [type(layer) for layer in cache.layers]
            seen.clear()
            runs.append((steps(model, kw, cache, out, 5, ()), cache, [*seen]))
    hook.remove()
    (tokens, cache, types), (want, grown, _) = runs
    assert tokens == want
    during = [StaticLayer if kind is DynamicLayer else kind for kind in handed]
    assert types and all(kinds == during for kinds in types)  # every step wrote full layers in place
    assert (DynamicSlidingWindowLayer in handed) == (family == "gemma3")
    assert [type(layer) for layer in cache.layers] == handed  # handed back: crop and reuse work
    assert cache.get_seq_length() == grown.get_seq_length() == 124
    for mine, theirs in zip(cache.layers, grown.layers, strict=True):
        assert torch.allclose(mine.keys, theirs.keys, atol=1e-6)
        assert torch.allclose(mine.values, theirs.values, atol=1e-6)


def test_planner_is_deterministic_and_switches_to_stream_then_prefill(family_dirs):
    """Under a budget below the single pass the plan streams; for a family the engine refuses to stream
    (HyperCLOVAX: not in the stream table) it is a chunked prefill; below every plan nothing fits."""
    for family, below_single in (("llama", "stream"), ("hyperclovax", "prefill")):
        loaded = models.load(str(family_dirs[family]))
        single = engine.Engine(loaded).plan(4096)
        assert str(single) == "single", family
        budget = single.estimate_bytes - 1
        eng = engine.Engine(loaded, max_memory=budget)
        assert eng.stream_exact == (below_single == "stream"), family
        plan = eng.plan(4096)
        assert plan.strategy == below_single and plan.fits and plan.estimate_bytes <= budget, family
        assert eng.plan(4096) == plan  # the same plan again, and from another engine with that budget
        assert engine.Engine(loaded, max_memory=budget).plan(4096) == plan
        assert not engine.Engine(loaded, max_memory=1000).plan(4096).fits


def test_longrope_across_original_max_positions_matches_fresh_models(tmp_path):
    """LongRoPE switches short/long factors at original_max_position_embeddings (64 here): fixed per L."""
    path = make_tiny(tmp_path / "phi3", "phi3")
    dim_half = 8  # head_dim 16
    override = rope_config.RopeOverride(rope_type="longrope", params={
        "short_factor": [1.0 + 0.1 * i for i in range(dim_half)],
        "long_factor": [2.0 + 0.5 * i for i in range(dim_half)]})
    loaded = models.load(str(path), override)
    engines = {chunk: engine.Engine(loaded, chunk_size=chunk) for chunk in (None, 40)}  # each, every length
    ids = ids_of(300, seed=4)
    for length in (300, 50, 64, 65, 200):
        ref = plain_nll(path, override, ids[:length])
        for chunk, eng in engines.items():
            assert torch.allclose(eng.token_nll(ids[:length]), ref, rtol=1e-5, atol=1e-5), (length, chunk)
    eng = engines[None]
    assert not torch.allclose(eng.token_nll(ids[:200])[:63], eng.token_nll(ids[:64]), rtol=1e-4)


def test_gemma3_dynamic_on_global_layers_matches_fresh_models(family_dirs):
    """Per-layer-type RoPE: the override and the per-length fix touch only the global layers' section."""
    override = rope_config.RopeOverride(rope_type="dynamic", factor=4)
    eng = engine.Engine(models.load(str(family_dirs["gemma3"]), override))
    ids = ids_of(400, seed=5)
    for length in (400, 150):
        ref = plain_nll(family_dirs["gemma3"], override, ids[:length])
        assert torch.allclose(eng.token_nll(ids[:length]), ref, rtol=1e-5, atol=1e-5), length


def counting_tokens(eng) -> list[int]:
    """Tokens each decoder forward ran (a forward hook on the input embedding)."""
    seen: list[int] = []
    eng.model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    return seen


def prefix_prompts(shared: int, tail: int = 40) -> tuple[list[int], list[int]]:
    head = ids_of(shared, seed=7)
    return head + ids_of(tail, seed=8), head + ids_of(tail, seed=9)


@pytest.mark.parametrize("chunk", [None, 64])
def test_prompt_sharing_a_prefix_reuses_its_cache_and_equals_a_fresh_prefill(tiny_llama, chunk):
    """The second prompt's prefill runs only past the prefix it shares with the first; its answer score
    and greedy tokens equal those of an engine that never reuses."""
    loaded = models.load(str(tiny_llama))
    first, second = prefix_prompts(200)
    answer = ids_of(3, seed=10)
    eng = engine.Engine(loaded, chunk_size=chunk)
    eng.score_and_generate_batch([first], [answer], 5)
    seen = counting_tokens(eng)
    got = eng.score_and_generate_batch([second], [answer], 5)
    # prefill past the prefix, the answer's teacher forcing, 4 greedy steps (the 5th token needs none)
    assert seen == [40, len(answer) - 1, 1, 1, 1, 1]
    fresh = engine.Engine(loaded, chunk_size=chunk, prefix_reuse=False).score_and_generate_batch(
        [second], [answer], 5)
    assert got.ran[0].prefix_reused == 200 and fresh.ran[0].prefix_reused == 0
    (score, tokens), (want, want_tokens) = got.values[0], fresh.values[0]
    assert tokens == want_tokens
    assert score.logprob == pytest.approx(want.logprob, rel=1e-5, abs=1e-5)
    assert score.token_logprobs == pytest.approx(want.token_logprobs, rel=1e-5, abs=1e-5)


def test_prefix_reuse_is_skipped_where_it_would_not_be_exact_or_worth_it(tiny_llama):
    loaded = models.load(str(tiny_llama))
    eng = engine.Engine(loaded)
    short_a, short_b = prefix_prompts(prefix_cache.MIN_SHARED_PREFIX - 1)
    eng.generate_batch([short_a], 2)
    assert eng.generate_batch([short_b], 2).ran[0].prefix_reused == 0  # too short a prefix to keep
    half_a, half_b = prefix_prompts(100, tail=101)
    eng.generate_batch([half_a], 2)
    assert eng.generate_batch([half_b], 2).ran[0].prefix_reused == 0  # under half the prompt: recomputed
    first, second = prefix_prompts(200)
    eng.generate_batch([first], 2)
    eng.token_nll(ids_of(50))  # a scoring verb frees the kept cache
    assert eng.generate_batch([second], 2).ran[0].prefix_reused == 0
    assert eng.generate_batch([first], 2).ran[0].prefix_reused == 200
    assert eng.generate_batch([first], 2).ran[0].prefix_reused == 239  # all but the last token, always run
    dynamic = engine.Engine(models.load(str(tiny_llama), OVERRIDES["dynamic"]))
    longer = second + ids_of(10, seed=11)
    dynamic.generate_batch([first], 2)
    assert dynamic.generate_batch([longer], 2).ran[0].prefix_reused == 0  # RoPE fixed at another length
    dynamic.generate_batch([first], 2)
    assert dynamic.generate_batch([second], 2).ran[0].prefix_reused == 200


def test_sliding_window_layers_never_reuse(family_dirs):
    """A sliding-window layer's crop cannot restore a prefix's K/V: gemma2 alternates such layers."""
    eng = engine.Engine(models.load(str(family_dirs["gemma2"])))
    first, second = prefix_prompts(200)
    eng.generate_batch([first], 2)
    got = eng.generate_batch([second], 2)
    assert got.ran[0].prefix_reused == 0
    assert got.values[0] == engine.Engine(models.load(str(family_dirs["gemma2"]))).generate(second, 2)


def test_answer_score_frees_the_kept_cache_unless_the_budget_holds_both(tiny_llama):
    """A budget that holds a 240-token prompt's single pass and its cache: a short answer score runs beside
    the kept cache, a longer one (whose pass with a cache does not fit) frees it first."""
    loaded = models.load(str(tiny_llama))
    first, second = prefix_prompts(200)
    budget = engine.Engine(loaded).plan(len(first), generation=True).estimate_bytes
    eng = engine.Engine(loaded, max_memory=budget)
    longer = first + second
    assert eng.plan(len(first), generation=True).strategy == "single"
    assert eng.plan(len(longer), generation=True).strategy != "single"
    eng.generate_batch([first], 2)
    eng.answer_score(first[:100], first[100:105])  # a single pass with a cache fits: the cache stays
    assert eng.generate_batch([second], 2).ran[0].prefix_reused == 200
    eng.answer_score(longer[:-5], longer[-5:])  # does not fit beside the kept cache: freed
    assert eng.generate_batch([first], 2).ran[0].prefix_reused == 0  # (kept: 200, shared with second)
