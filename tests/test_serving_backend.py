"""The served engine behind the engine contract: a real llama.cpp server against the in-process HF engine on
the same GGUF (a tiny random Llama with float32 weights, written by the test)."""

from __future__ import annotations

import pytest

from harness.serving.backend import ServedEngine, until_stop

pytest.importorskip("llama_cpp")

from serving_helpers import serve  # noqa: E402

TEXT = "the other thing in an hour, then another thing"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(served engine, in-process engine, tokenizer) on one tiny GGUF."""
    import os

    from harness.engine.engine import Engine
    from harness.model import models
    from harness.serving.client import Client

    folder = tmp_path_factory.mktemp("backend")
    os.environ["ROPE_HARNESS_CACHE"] = str(folder / "cache")
    try:
        for server in serve(folder):
            loaded = models.load(server.argv[server.argv.index("--model") + 1])
            with Client([server.url], retries=1, backoff=0.05, timeout=60) as client:
                yield (ServedEngine(client, engine="llama.cpp", version="0.3.36", scores=True),
                       Engine(loaded), loaded.tokenizer)
    finally:
        os.environ.pop("ROPE_HARNESS_CACHE", None)


def test_until_stop_ends_as_the_greedy_loop_does():
    assert until_stop([5, 6, 7, 8], [7], 10) == [5, 6, 7]
    assert until_stop([5, 6, 7, 8], [], 2) == [5, 6]
    assert until_stop([], [1], 3) == []


def test_served_answer_scores_match_the_in_process_engine(pair):
    served, local, tokenizer = pair
    ids = tokenizer(TEXT)["input_ids"]
    prompt, answer = ids[:-3], ids[-3:]
    got = served.score_and_generate_batch([prompt], [answer], 8)
    want = local.score_and_generate_batch([prompt], [answer], 8)
    (score, new), (ref, ref_new) = got.values[0], want.values[0]
    # llama.cpp's float32 kernels and its prompt-cache reuse: ~1e-3 apart, never more than 1e-2
    assert score.token_logprobs == pytest.approx(ref.token_logprobs, abs=1e-2)
    assert score.logprob == pytest.approx(ref.logprob, abs=3e-2)
    # the same greedy text (the served ids are the text's tokens: bytes of a broken UTF-8 character drop out)
    strip = "\ufffd"
    assert tokenizer.decode(new).replace(strip, "") == tokenizer.decode(ref_new).replace(strip, "")
    assert got.ran[0].plan == "served:llama.cpp" and want.ran[0].plan == "single"


def test_without_prompt_logprobs_answers_are_unscored_and_perplexity_refused(pair):
    served, _, tokenizer = pair
    ids = tokenizer(TEXT)["input_ids"]
    blind = ServedEngine(served.client, engine="llama.cpp", version="0.3.36", scores=False)
    ((score, new),) = blind.score_and_generate_batch([ids[:-2]], [ids[-2:]], 4).values
    assert score.logprob is None and score.rank is None and len(new) <= 4
    with pytest.raises(RuntimeError, match="perplexity in-process"):
        blind.token_nll_batch([ids])


def test_llama_cpp_perplexity_is_refused_for_its_missing_first_logprob(pair):
    served, _, tokenizer = pair
    with pytest.raises(RuntimeError, match="first after BOS"):
        served.token_nll_batch([tokenizer(TEXT)["input_ids"]])
