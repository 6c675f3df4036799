"""The client and the served engine against a fake OpenAI-compatible server (vLLM's answers, canned): base
URLs with or without /v1, token-id prompts through the openai client, echoed prompt log-probs into
perplexity, and one-line failures. No engine needed: a tiny http.server on 127.0.0.1."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness.serving.backend import ServedEngine
from harness.serving.client import Client, base_url, models, tokenize
from harness.serving.process import ServerError


def logprob(context: list[int], token: int) -> float:
    """The fake model's log p(token | context): any deterministic negative number."""
    return -0.25 - 0.01 * ((token * 7 + len(context)) % 13)


class Fake(BaseHTTPRequestHandler):
    """vLLM's /v1/models, /tokenize and /v1/completions (token-id prompts, echo, logprobs, token ids)."""

    seen: list[tuple[str, dict]] = []
    fail: list[int] = []  # HTTP statuses answered to the next completions, in order
    tokenizer = None  # a model's tokenizer behind /tokenize (None: BOS 1, then each character's code)
    model = None  # ids -> per position log p(ids[i] | ids[:i]) (first None) and the greedy next id

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        Fake.seen.append((self.path, {}))
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        self._send(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        Fake.seen.append((self.path, body))
        if self.path == "/tokenize":
            tokens = (Fake.tokenizer(body["prompt"])["input_ids"] if Fake.tokenizer is not None
                      else [1] + [ord(c) for c in body["prompt"]])
            return self._send(200, {"tokens": tokens})
        if self.path != "/v1/completions":
            return self._send(404, {"error": "not found"})
        if Fake.fail:
            return self._send(Fake.fail.pop(0), {"error": "canned failure"})
        self._send(200, completion(body))


def completion(body: dict) -> dict:
    prompt, n = list(body["prompt"]), body["max_tokens"]
    if Fake.model is not None:
        echoed, following = Fake.model(prompt)
        generated, lps = [following] * n, [-0.5] * n
    else:
        echoed = [None] + [logprob(prompt[:i], t) for i, t in enumerate(prompt) if i]
        generated, lps = [(prompt[-1] + 1 + i) % 50 for i in range(n)], [logprob([], prompt[-1])] * n
    tokens, values = [f"t{t}" for t in generated], list(lps)
    if body.get("echo"):  # the first prompt token has no log-prob (null), as vLLM answers
        tokens = [f"t{t}" for t in prompt] + tokens
        values = echoed + values
    logprobs = ({"tokens": tokens, "token_logprobs": values, "top_logprobs": None,
                 "text_offset": list(range(len(tokens)))} if body.get("logprobs") is not None else None)
    text = "".join(t[1:] for t in tokens) if body.get("echo") else "".join(tokens)
    return {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "length",
                         "token_ids": generated, "prompt_token_ids": prompt}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": n,
                      "total_tokens": len(prompt) + n}}


@pytest.fixture(scope="module")
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fresh():
    Fake.seen.clear()
    Fake.fail.clear()
    Fake.tokenizer = Fake.model = None


def test_base_url_is_normalised_in_one_place():
    for given in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/", " http://h:8000"):
        assert base_url(given) == "http://h:8000"
    assert base_url("http://h:8000/serve/v1") == "http://h:8000/serve"


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_a_url_with_or_without_v1_reaches_the_same_endpoints(fake, suffix):
    assert models(fake + suffix) == ["fake"]
    assert tokenize(fake + suffix, "ab") == [1, 97, 98]
    with Client([fake + suffix], retries=0) as client:
        result = client.complete([3, 4, 5], 2)
        assert client.urls == [fake]
    assert result["ids"] == [6, 7] and result["ids_exact"] and result["url"] == fake
    paths = [path for path, _ in Fake.seen]
    assert "/v1/completions" in paths and not any(p.startswith("/v1/v1") for p in paths)
    sent = next(body for path, body in Fake.seen if path == "/v1/completions")
    assert sent["prompt"] == [3, 4, 5] and sent["temperature"] == 0.0 and sent["return_token_ids"] is True


def test_echoed_log_probs_are_one_per_prompt_token_the_first_null(fake):
    prompt = [2, 9, 4, 11]
    with Client([fake], retries=0) as client:
        result = client.complete(prompt, 1, logprobs=1, echo=True)
    assert result["prompt_logprobs"] == [None] + [logprob(prompt[:i], t) for i, t in enumerate(prompt) if i]
    assert len(result["token_logprobs"]) == 1 and result["ids"] == [12]


def test_perplexity_through_the_served_engine_from_echoed_log_probs(fake):
    sequences = [[1, 5, 6, 7, 8], [1, 9, 10]]
    with Client([fake], retries=0) as client:
        engine = ServedEngine(client, engine="vllm", version="0", scores=True)
        scored = engine.token_nll_batch(sequences)
    for ids, nll in zip(sequences, scored.values, strict=True):
        assert nll.dtype.is_floating_point and len(nll) == len(ids) - 1
        want = [-logprob(ids[:i], t) for i, t in enumerate(ids) if i]
        assert [float(x) for x in nll] == pytest.approx(want, abs=1e-6)
    assert [r.plan for r in scored.ran] == ["served:vllm"] * 2
    sent = [body for path, body in Fake.seen if path == "/v1/completions"]
    assert {(tuple(b["prompt"]), b["echo"], b["logprobs"], b["max_tokens"]) for b in sent} == {
        (tuple(s), True, 1, 1) for s in sequences}  # exact token ids, echoed, one generated token


def test_answer_scores_come_from_the_echo_of_prompt_and_answer(fake):
    prompt, answer = [1, 20, 21, 22], [30, 31]
    with Client([fake], retries=0) as client:
        engine = ServedEngine(client, engine="vllm", version="0", scores=True)
        (score, generated), = engine.score_and_generate_batch([prompt], [answer], 3).values
    joined = prompt + answer
    want = [logprob(joined[:i], joined[i]) for i in range(len(prompt), len(joined))]
    assert score.token_logprobs == pytest.approx(want) and score.logprob == pytest.approx(math.fsum(want))
    assert generated == [23, 24, 25]


def test_an_engine_without_prompt_log_probs_refuses_perplexity_in_one_line(fake):
    with Client([fake], retries=0) as client:
        engine = ServedEngine(client, engine="llama.cpp", version="0", scores=False)
        with pytest.raises(RuntimeError) as raised:
            engine.token_nll_batch([[1, 2, 3]])
    assert "in-process" in str(raised.value) and "\n" not in str(raised.value)
    assert not any(path == "/v1/completions" for path, _ in Fake.seen)


def test_5xx_is_retried_and_4xx_is_one_line_naming_the_url(fake):
    Fake.fail[:] = [503]
    with Client([fake + "/v1"], retries=2, backoff=0.01) as client:
        assert client.complete([1, 2], 1)["ids"] == [3]
        Fake.fail[:] = [400]
        with pytest.raises(ServerError) as raised:
            client.complete([1, 2], 1)
    message = str(raised.value)
    assert message.startswith(f"{fake}/v1/completions") and "HTTP 400" in message and "\n" not in message
    assert [p for p, _ in Fake.seen].count("/v1/completions") == 3  # 503, ok, 400 (not retried)


def test_perplexity_run_through_a_served_vllm_equals_the_in_process_run(fake, tiny_llama, tmp_path):
    """`run --task perplexity` with --serve vllm on a running server (the fake, answering with the same
    model's float32 log-probs, as vLLM in float32 would): the records' perplexity equals the in-process
    run's."""
    import torch
    from test_serving_python import environment, fake_vllm_cpu
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.cli import main
    from harness.run.store import read_jsonl

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    Fake.tokenizer = AutoTokenizer.from_pretrained(tiny_llama)

    def score(ids: list[int]) -> tuple[list[float | None], int]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        return [None] + [float(logits[i - 1, t]) for i, t in enumerate(ids) if i], int(logits[-1].argmax())

    Fake.model = score
    python = environment(tmp_path / "env", fake_vllm_cpu(tmp_path / "site"))
    args = ["run", "--model", str(tiny_llama), "--task", "perplexity", "--lengths", "64,96", "--samples", "2",
            "--no-progress", "--no-report"]
    assert main([*args, "--serve", "vllm", "--server-url", fake + "/v1", "--engine-python", python,
                 "--no-probe", "--out", str(tmp_path / "served")]) == 0
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    served, local = (sorted(read_jsonl(tmp_path / name, "records"), key=lambda r: (r["length"], r["sample"]))
                     for name in ("served", "local"))
    assert len(served) == len(local) == 4
    for a, b in zip(served, local, strict=True):
        assert a["status"] == b["status"] == "ok" and a["engine"] == "vllm" and "engine" not in b
        assert a["engine_version"] == "0.32.0" and a["plan"] == "served:vllm"
        assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-5)
    assert any(path == "/v1/completions" and body["echo"] for path, body in Fake.seen)
