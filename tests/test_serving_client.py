"""harness.serving.client against a real llama-cpp-python server on a tiny GGUF: token-id prompts, greedy
ids, echo log-probs (checked against llama.cpp in-process), round-robin, and one-line failures."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from serving_helpers import gone, kill_group, serve  # noqa: E402

from harness.serving.client import Client, models, tokenize  # noqa: E402
from harness.serving.process import ServerError, free_port  # noqa: E402

TEXT = "the other thing in an hour, then another thing"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def client(served):
    with Client([served.url], retries=1, backoff=0.05, timeout=60) as c:
        yield c


def model_path(served) -> str:
    return served.argv[served.argv.index("--model") + 1]


def test_models_and_tokenize(served):
    assert models(served.url) == [model_path(served)]
    bos = tokenize(served.url, "")
    ids = tokenize(served.url, TEXT)
    assert len(bos) == 1 and ids[0] == bos[0] and len(ids) > 20  # the server adds BOS, as the model says


def test_token_id_prompt_gives_the_same_greedy_ids_twice(served, client):
    import llama_cpp

    ids = tokenize(served.url, TEXT)
    first, second = client.complete(ids, 12), client.complete(ids, 12)
    assert first["ids"] == second["ids"] and first["text"] == second["text"]
    assert first["ids"] and first["ids_exact"] is False and first["url"] == served.url
    llm = llama_cpp.Llama(model_path=model_path(served), n_ctx=512, verbose=False, n_threads=1)
    greedy = [t for _, t in zip(range(12), llm.generate(ids, temp=0.0), strict=False)]
    assert first["text"] == llm.detokenize(greedy).decode("utf-8", errors="ignore")  # text-exact


def in_process_logprobs(path: str, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1 from llama.cpp in this process (float64 log-softmax)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=512, logits_all=True, verbose=False, n_threads=1)
    llm.eval(ids)
    scores = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    scores -= scores.max(1, keepdims=True)
    scores -= np.log(np.exp(scores).sum(1, keepdims=True))
    return [float(scores[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echo_gives_every_prompt_logprob_but_the_first_two(served, client):
    ids = tokenize(served.url, TEXT)
    client.complete(tokenize(served.url, "zzz"), 1)  # no prefix shared with the last request (see client.py)
    result = client.complete(ids, 1, logprobs=2, echo=True)
    prompt = result["prompt_logprobs"]
    assert len(prompt) == len(ids) and prompt[:2] == [None, None]  # BOS, and log p(token 1 | BOS) nulled
    assert all(isinstance(x, float) for x in prompt[2:])
    assert np.allclose(prompt[2:], in_process_logprobs(model_path(served), ids)[1:], atol=1e-5)
    assert len(result["token_logprobs"]) == result["usage"]["completion_tokens"] >= 1
    assert TEXT not in result["text"]  # the echoed prompt is cut off


def test_prompts_that_do_not_come_back_identical_are_refused(served, client):
    ids = tokenize(served.url, "th")  # [BOS, "th"]; "t" + "h" detokenises to the same text
    t, h = tokenize(served.url, "t")[1], tokenize(served.url, "h")[1]
    with pytest.raises(ServerError, match="tokenises this prompt differently"):
        client.complete([ids[0], t, h], 1)
    with pytest.raises(ServerError, match="tokenises this prompt differently"):
        client.complete(ids[1:], 1)  # no BOS, which the server adds
    with pytest.raises(ValueError, match="max_tokens"):
        client.complete(ids, 0)  # llama-cpp-python's 0 means "until the context is full"


def test_echo_without_bos_is_refused(tmp_path):
    with contextmanager(serve)(tmp_path, add_bos=False) as server:
        ids = tokenize(server.url, TEXT)
        with Client([server.url], retries=0) as plain:
            assert plain.complete(ids, 3)["ids"]  # generation is fine
            with pytest.raises(ServerError, match="misaligns prompt log-probs"):
                plain.complete(ids, 1, logprobs=1, echo=True)
            # a BOS the model does not add (SmolLM2's case): the server's detokenisation drops it
            bos = tokenize(server.url, "<s>")
            with pytest.raises(ServerError, match="tokenises this prompt differently"):
                plain.complete(bos + ids, 2)
        # the model's own tokenizer writes it out and the server parses it back: the same ids
        with Client([server.url], retries=0, decode=lambda got: "<s>" * (got[:1] == bos) + TEXT) as spelled:
            assert spelled.complete(bos + ids, 2)["ids"]


def test_round_robin_over_two_urls(served):
    other = served.url.replace("127.0.0.1", "localhost")
    prompts = [tokenize(served.url, word) for word in ("the", "other", "thing", "hour")]
    with Client([served.url, other], max_in_flight=2, retries=1, backoff=0.05) as shared:
        results = shared.complete_all(prompts, 4)
    assert [r["url"] for r in results].count(other) == 2
    with Client([served.url]) as single:
        assert [r["ids"] for r in results] == [single.complete(p, 4)["ids"] for p in prompts]


def test_a_wrong_url_is_one_line_naming_it():
    url = f"http://127.0.0.1:{free_port()}"
    with Client([url], retries=2, backoff=0.01) as dead, pytest.raises(ServerError) as raised:
        dead.complete([1, 2, 3], 1)
    message = str(raised.value)
    assert message.startswith(url) and "3 tries" in message and "\n" not in message


def test_a_server_killed_mid_call_raises_instead_of_hanging(tmp_path):
    with contextmanager(serve)(tmp_path) as server:
        ids = tokenize(server.url, TEXT)
        outcome: dict = {}

        def call() -> None:
            try:
                outcome["result"] = victim.complete(ids, 1500)  # seconds of generation
            except ServerError as exc:
                outcome["error"] = str(exc)

        with Client([server.url], retries=2, backoff=0.05, timeout=120) as victim:
            victim.complete(ids, 1)  # learn the server before the kill
            worker = threading.Thread(target=call)
            worker.start()
            time.sleep(0.5)
            kill_group(server.pid)
            worker.join(30)
        assert not worker.is_alive() and gone(server.pid)
        assert "error" in outcome and outcome["error"].startswith(server.url), outcome
