"""An OpenAI-compatible completions client for served engines: token-id prompts, greedy decoding, prompt
log-probs, retries, several servers round-robin. Completions go through the `openai` client (the `serve`
extra; plain HTTP where it is not installed), the calls no client covers (/v1/models, the engines' tokenize
endpoints) through httpx, imported when a client is made (or its fork httpx2, which openai and
huggingface_hub install). A server URL is its base with or without the OpenAI `/v1` (`base_url`).

What llama-cpp-python 0.3.36's server does (measured against it, tests/test_serving_client.py):
- /v1/completions refuses token-id prompts (`prompt` is str | list[str]: HTTP 500 with a validation error).
  The client sends such a server text instead, and only after checking, per prompt, that the server's own
  /extras/tokenize gives back exactly the ids (/extras/detokenize drops control tokens such as BOS, the
  server re-adds BOS when the model does). A prompt that does not come back identical is refused.
- The completion has no token ids, only text: the generated ids are the server's tokenisation of the
  generated text (`ids_exact` False). The same text, not always the sampled ids (a byte-level model can emit a
  non-canonical split, or part of a UTF-8 character that the text drops). It may generate more tokens than
  max_tokens to finish a UTF-8 character; max_tokens=0 means "until the context is full", so it is refused.
- echo=True with logprobs=k (the server runs with --logits_all true): one log-prob per prompt token after
  the BOS, then the generated ones; the first (log p(token 1 | BOS)) is null (the OpenAI convention), so a
  prompt of n tokens yields n-2 prompt log-probs. They equal llama.cpp's in-process log-softmax to 1e-6
  (float32). Without a BOS (a model whose tokenizer adds none) every value is shifted: entry j is
  log p(token j) under the distribution that predicts token j+1, so the client refuses echo log-probs there.
  The server reuses the KV cache of the longest prefix shared with its previous request (always, whatever
  --cache says): the positions evaluated in the new batch then differ by up to ~1e-3 in log-prob (measured),
  so served log-probs depend on request order at that level.
- Echo log-probs cost O(vocab log vocab) Python per prompt token (a full sort per position): 3.6 ms per token
  at a 264-token vocabulary, 77 ms at 32K (2 CPU cores), so ~10 minutes for an 8K prompt of a 32K-vocab
  model; logits_all also holds n_ctx x vocab float32 scores in RAM. Perplexity can be served exactly for
  models with a BOS (minus one token per prompt) but only short prompts are practical.
- /extras/tokenize (adds BOS when the model does, parses special tokens) and /extras/detokenize exist; the
  latter answers 500 for ids that end inside a UTF-8 character. One request runs at a time (a global lock),
  and a request the client gave up on keeps running on the server.
vLLM (not measured here) takes token-id prompts, returns the sampled ids with `return_token_ids` (>= 0.10.2)
and prompt log-probs with echo; both are used when present.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness.serving.process import ServerError

TOKENIZE = (("/extras/tokenize", "input"), ("/tokenize", "prompt"))  # llama-cpp-python, vLLM


def _httpx():
    try:
        import httpx2 as httpx  # the maintained fork; openai and huggingface_hub depend on it
    except ImportError:
        import httpx
    return httpx


def base_url(url: str) -> str:
    """A server's root URL, the one place URLs are normalised: `http://h:p`, `http://h:p/` and the OpenAI
    base-URL convention `http://h:p/v1` all give `http://h:p` (the client adds /v1/... itself)."""
    url = url.strip().rstrip("/")
    return url[:-3].rstrip("/") if url.endswith("/v1") else url


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def models(url: str, timeout: float = 10.0) -> list[str]:
    """The model ids a server serves (GET /v1/models)."""
    with _httpx().Client(timeout=timeout, trust_env=False) as http:
        return [m["id"] for m in _call(http, base_url(url), "GET", "/v1/models", None, retries=0)["data"]]


def tokenize(url: str, text: str, timeout: float = 30.0) -> list[int]:
    """The server's token ids for `text`, special tokens (BOS) as the server adds them; raises where the
    server offers no tokenize endpoint."""
    with _httpx().Client(timeout=timeout, trust_env=False) as http:
        return _tokenize(http, base_url(url), text, retries=0)


def _tokenize(http: Any, url: str, text: str, retries: int, backoff: float = 0.5) -> list[int]:
    for path, key in TOKENIZE:
        data = _call(http, url, "POST", path, {key: text}, retries=retries, backoff=backoff, missing_ok=True)
        if data is not None:
            return [int(t) for t in data["tokens"]]
    raise ServerError(f"{url} offers no tokenize endpoint ({', '.join(p for p, _ in TOKENIZE)})")


def _call(http: Any, url: str, method: str, path: str, body: dict | None, *, retries: int,
          backoff: float = 0.5, retry_5xx: bool = True, missing_ok: bool = False) -> Any:
    """One JSON request with retries (exponential backoff) on connection errors and 5xx answers; a one-line
    ServerError naming the URL once they are spent; None for a 404 when missing_ok."""
    httpx, last = _httpx(), ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            response = http.request(method, url.rstrip("/") + path, json=body)
        except httpx.TimeoutException as exc:
            if not isinstance(exc, httpx.ConnectTimeout):  # busy, not gone: a retry would queue more work
                raise ServerError(f"{url}{path}: no answer within the timeout "
                                  f"({_one_line(exc, 80)})") from None
            last = f"{type(exc).__name__}: {_one_line(exc, 120)}"
            continue
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {_one_line(exc, 120) or 'connection failed'}"
            continue
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code < 400:
            return response.json()
        last = f"HTTP {response.status_code}: {_one_line(response.text, 160)}"
        if response.status_code < 500 or not retry_5xx:
            break
    tries = f" after {retries + 1} tries" if retries else ""
    raise ServerError(f"{url}{path} failed{tries} ({last})")


class Client:
    """Completions on one or more servers of the same model, shared round-robin, at most `max_in_flight`
    requests at a time (threads may call `complete`; `complete_all` does it for a list)."""

    def __init__(self, urls: Sequence[str], max_in_flight: int = 4, retries: int = 3, timeout: float = 600.0,
                 backoff: float = 0.5, decode: Callable[[list[int]], str] | None = None) -> None:
        if not urls:
            raise ValueError("Client needs at least one server URL")
        self.decode = decode  # ids -> text, special tokens written out (the model's tokenizer)
        httpx = _httpx()
        self.urls = [base_url(u) for u in urls]
        self.retries, self.backoff, self.max_in_flight = retries, backoff, max_in_flight
        self.timeout = timeout
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), trust_env=False,
                                  limits=httpx.Limits(max_connections=max_in_flight))
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._turn = itertools.count()
        self._servers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._openai: dict[str, Any] = {}  # url -> openai.OpenAI on the shared HTTP client (None: plain HTTP)

    def complete(self, prompt_ids: list[int], max_tokens: int, *, logprobs: int | None = None,
                 echo: bool = False) -> dict[str, Any]:
        """Greedy completion of a token-id prompt on the next server: {url, ids, ids_exact, text,
        finish_reason, token_logprobs and token_texts (generated), prompt_logprobs (echo: one per prompt id,
        None where the server gives none), top_logprobs (generated), usage}."""
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1 (llama-cpp-python reads 0 as 'fill the context')")
        url = self.urls[next(self._turn) % len(self.urls)]
        with self._slots:
            server = self._server(url)
            prompt = self._text_of(url, prompt_ids) if server["text"] else list(prompt_ids)
            if echo and logprobs is not None and server["text"] and not self._bos_first(server, prompt_ids):
                raise ServerError(f"{url}: llama-cpp-python's server misaligns prompt log-probs of a prompt "
                                  "without a leading BOS: score it in-process")
            body = {"model": server["model"], "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                    "top_p": 1.0, "echo": echo, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                    "repeat_penalty": 1.0,  # llama-cpp-python's server defaults to 1.1
                    "repetition_penalty": 1.0,  # vLLM/SGLang: a generation_config may set one
                    "return_token_ids": True}  # vLLM: the sampled ids, not re-tokenised text
            if logprobs is not None:
                body["logprobs"] = logprobs
            data = self._completion(url, body)
            return self._result(url, server, prompt, prompt_ids, data, echo)

    def complete_all(self, prompts: Sequence[list[int]], max_tokens: int, *, logprobs: int | None = None,
                     echo: bool = False) -> list[dict[str, Any]]:
        """`complete` for each prompt, `max_in_flight` at a time, results in prompt order."""
        with ThreadPoolExecutor(max_workers=self.max_in_flight) as pool:
            return list(pool.map(lambda p: self.complete(p, max_tokens, logprobs=logprobs, echo=echo),
                                 prompts))

    def close(self) -> None:
        self._http.close()
        for api in self._openai.values():
            if api is not None:
                api.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, url: str, path: str, body: dict, retry_5xx: bool = True) -> Any:
        return _call(self._http, url, "POST", path, body, retries=self.retries, backoff=self.backoff,
                     retry_5xx=retry_5xx)

    def _completion(self, url: str, body: dict[str, Any]) -> Any:
        """POST /v1/completions through the openai client (its JSON as sent: vLLM's extra fields kept,
        null log-probs too), retried as `_call` retries; plain HTTP where openai is not installed."""
        api = self._api(url)
        if api is None:
            return self._post(url, "/v1/completions", body)
        import openai

        known = ("model", "prompt", "max_tokens", "temperature", "top_p", "echo", "frequency_penalty",
                 "presence_penalty", "logprobs")
        args = {k: v for k, v in body.items() if k in known}
        extra = {k: v for k, v in body.items() if k not in known}
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                raw = api.completions.with_raw_response.create(**args, extra_body=extra)
                return raw.http_response.json()
            except openai.APITimeoutError as exc:
                if type(exc.__cause__).__name__ != "ConnectTimeout":  # busy, not gone: no retry
                    raise ServerError(f"{url}/v1/completions: no answer within the timeout") from None
                last = f"ConnectTimeout: {_one_line(exc.__cause__, 120)}"
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                last = f"{type(cause).__name__}: {_one_line(cause, 120) or 'connection failed'}"
            except openai.APIStatusError as exc:
                last = f"HTTP {exc.status_code}: {_one_line(exc.response.text, 160)}"
                if exc.status_code < 500:
                    break
        tries = f" after {self.retries + 1} tries" if self.retries else ""
        raise ServerError(f"{url}/v1/completions failed{tries} ({last})")

    def _api(self, url: str) -> Any:
        """The openai client of one server (made once), or None where openai is not installed."""
        with self._lock:
            if url not in self._openai:
                try:
                    import openai
                except ImportError:
                    self._openai[url] = None
                else:
                    # its own HTTP client, of the httpx openai was built on; never via $http_proxy
                    http = openai.DefaultHttpxClient(trust_env=False)
                    self._openai[url] = openai.OpenAI(
                        base_url=url + "/v1", api_key="none", max_retries=0, http_client=http,
                        timeout=openai.Timeout(self.timeout, connect=min(self.timeout, 10.0)))
            return self._openai[url]

    def _server(self, url: str) -> dict[str, Any]:
        """What the client learns about a server once: its model id, whether it needs text prompts
        (llama-cpp-python: it has /extras/detokenize), and the ids it puts before any text."""
        with self._lock:
            known = self._servers.get(url)
        if known is not None:
            return known
        data = _call(self._http, url, "GET", "/v1/models", None, retries=self.retries, backoff=self.backoff)
        text = _call(self._http, url, "POST", "/extras/detokenize", {"tokens": []}, retries=self.retries,
                     backoff=self.backoff, missing_ok=True) is not None
        server = {"model": data["data"][0]["id"], "text": text,
                  "prefix": _tokenize(self._http, url, "", self.retries, self.backoff) if text else []}
        with self._lock:
            return self._servers.setdefault(url, server)

    @staticmethod
    def _bos_first(server: dict[str, Any], prompt_ids: list[int]) -> bool:
        return bool(server["prefix"]) and bool(prompt_ids) and prompt_ids[0] == server["prefix"][0]

    def _text_of(self, url: str, ids: list[int]) -> str:
        """The prompt as text the server tokenises back into exactly `ids` (else a ServerError): the harness
        tokenizer's text with special tokens written out (`decode`; the server parses them), else the
        server's own detokenisation (which drops control tokens such as a BOS the model does not add)."""
        def candidates():
            if self.decode is not None:
                yield self.decode(list(ids))
            yield self._post(url, "/extras/detokenize", {"tokens": list(ids)}, retry_5xx=False)["text"]

        for text in candidates():
            back = _tokenize(self._http, url, text, self.retries, self.backoff)
            if back == list(ids):
                return text
        at = next((i for i, (a, b) in enumerate(zip(back, ids, strict=False)) if a != b),
                  min(len(back), len(ids)))
        raise ServerError(f"{url}: the server tokenises this prompt differently ({len(back)} ids for "
                          f"{len(ids)}, first difference at position {at}): its tokenizer does not agree "
                          "with the harness's")

    def _result(self, url: str, server: dict[str, Any], prompt: Any, prompt_ids: list[int], data: dict,
                echo: bool) -> dict[str, Any]:
        choice, usage = data["choices"][0], data.get("usage") or {}
        lp = choice.get("logprobs") or {}
        values = lp.get("token_logprobs")
        n_gen = usage.get("completion_tokens", len(values or ()) if not echo else 0)
        n_echo = len(values) - n_gen if (echo and values is not None) else 0
        if not 0 <= n_echo <= len(prompt_ids):
            raise ServerError(f"{url}: {len(values)} log-probs for {len(prompt_ids)} prompt and {n_gen} "
                              "generated tokens")
        text = choice.get("text") or ""
        if echo:
            text = text[len(prompt):] if isinstance(prompt, str) else _after_echo(text, lp, n_echo)
        ids, exact = self._generated_ids(url, server, choice, (lp.get("tokens") or [])[n_echo:], text)
        return {"url": url, "ids": ids, "ids_exact": exact, "text": text,
                "finish_reason": choice.get("finish_reason"),
                "token_logprobs": values[n_echo:] if values is not None else None,
                "token_texts": (lp.get("tokens") or [])[n_echo:],  # each generated token's text
                "top_logprobs": (lp.get("top_logprobs") or [])[n_echo:] if values is not None else None,
                "prompt_logprobs": ([None] * (len(prompt_ids) - n_echo) + values[:n_echo]
                                    if echo and values is not None else None),
                "usage": usage}

    def _generated_ids(self, url: str, server: dict[str, Any], choice: dict, tokens: list,
                       text: str) -> tuple[list[int], bool]:
        """The sampled ids where the server returns them (vLLM's token_ids, or logprob tokens written as
        'token_id:N'), else the server's tokenisation of the generated text."""
        if choice.get("token_ids") is not None:
            return [int(t) for t in choice["token_ids"]], True
        if tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
            return [int(t.split(":", 1)[1]) for t in tokens], True
        ids = _tokenize(self._http, url, text, self.retries, self.backoff) if text else []
        prefix = server["prefix"]
        return (ids[len(prefix):] if prefix and ids[:len(prefix)] == prefix else ids), False


def _after_echo(text: str, lp: dict, n_echo: int) -> str:
    """The generated part of an echoed completion, cut at the first generated token's text offset."""
    offsets = lp.get("text_offset") or []
    if n_echo < len(offsets):
        return text[offsets[n_echo] - (offsets[0] if offsets else 0):]
    return ""
