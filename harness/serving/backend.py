"""The engine contract (harness/core/contract.py) answered by OpenAI-compatible servers, not an in-process
model.

Prompts go as token ids (the client checks a text-only server tokenises them back identically), decoding is
greedy. Where the server returns prompt log-probs (`scores=True`: vLLM; llama-cpp-python only with
--logits_all, and at a cost that rules out long prompts: see harness/serving/client.py) answers are scored
teacher-forced from the echoed log-probs of prompt + answer; otherwise answer scores are None (recorded as
null) and perplexity is refused. The server owns its memory: every plan fits, and says which engine ran it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.contract import AnswerScore, Ran, Scored
from harness.core.errors import Refusal


@dataclass(frozen=True)
class ServedPlan:
    """A served request: the server decides memory and batching, so every length 'fits'."""

    engine: str
    fits: bool = True
    estimate_bytes: int = 0

    def __str__(self) -> str:
        return f"served:{self.engine}"


def until_stop(ids: list[int], stop_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Generated ids cut after the first stop id and at max_new_tokens, as the in-process greedy loop ends."""
    out: list[int] = []
    for token in ids[:max_new_tokens]:
        out.append(token)
        if token in stop_ids:
            break
    return out


class ServedEngine:
    """The contract's verbs over a `harness.serving.client.Client`."""

    length_dependent = False  # the server applies its RoPE setting; length-dependent types are refused

    def __init__(self, client: Any, *, engine: str, version: str | None, scores: bool, dtype: str = "served"):
        self.client = client
        self.engine, self.version, self.scores, self.dtype = engine, version, scores, dtype

    def plan(self, length: int, generation: bool = False) -> ServedPlan:
        return ServedPlan(self.engine)

    def batch_size(self, length: int, generation: bool = False) -> int:
        """Prompts sent together: the client's requests in flight (the servers batch them)."""
        return self.client.max_in_flight

    def _ran(self, count: int) -> list[Ran]:
        return [Ran(str(self.plan(0)), count)] * count

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       stop_ids: Sequence[int] = ()) -> Scored[list[int]]:
        results = self.client.complete_all([list(p) for p in prompts], max_new_tokens)
        values = [until_stop(r["ids"], stop_ids, max_new_tokens) for r in results]
        return Scored(values, self._ran(len(prompts)))

    def score_and_generate_batch(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                                 max_new_tokens: int, stop_ids: Sequence[int] = ()
                                 ) -> Scored[tuple[AnswerScore, list[int]]]:
        generated = self.generate_batch(prompts, max_new_tokens, stop_ids)
        scores = self._answer_scores(prompts, answers) if self.scores else [
            AnswerScore(None, None, []) for _ in prompts]
        return Scored(list(zip(scores, generated.values, strict=True)), generated.ran)

    def _answer_scores(self, prompts: Sequence[Sequence[int]],
                       answers: Sequence[Sequence[int]]) -> list[AnswerScore]:
        """Teacher-forced: the echoed log-probs of each prompt + answer, at the answer's positions."""
        joined = [[*p, *a] for p, a in zip(prompts, answers, strict=True)]
        results = self.client.complete_all(joined, 1, logprobs=1, echo=True)
        scores = []
        for answer, result in zip(answers, results, strict=True):
            values = result["prompt_logprobs"][-len(answer):]
            if any(v is None for v in values):
                raise RuntimeError(f"{self.engine} returned no log-prob for an answer token: score it "
                                   "in-process")
            scores.append(AnswerScore(float(sum(values)), None, [float(v) for v in values]))
        return scores

    def token_nll_batch(self, sequences: Sequence[Sequence[int]]) -> Scored[Any]:
        """Per-token NLL of ids[1:] from echoed prompt log-probs; refused where the server gives none for
        every position (llama-cpp-python gives none for the first token after BOS)."""
        import torch

        if not self.scores:
            raise RuntimeError(f"{self.engine} serves no prompt log-probs here: score perplexity in-process")
        results = self.client.complete_all([list(s) for s in sequences], 1, logprobs=1, echo=True)
        values = []
        for result in results:
            logprobs = result["prompt_logprobs"][1:]
            if any(v is None for v in logprobs):
                raise RuntimeError(f"{self.engine} gives no log-prob for some prompt tokens (the first after "
                                   "BOS on llama.cpp): score perplexity in-process")
            values.append(-torch.tensor(logprobs, dtype=torch.float32))
        return Scored(values, self._ran(len(sequences)))


# seconds an engine may take to load before it is given up (a dead server fails at once): vLLM and SGLang load
# 70B checkpoints and compile CUDA graphs for minutes
READY_TIMEOUT = {"llama.cpp": 300.0, "vllm": 1800.0, "sglang": 1800.0}
SERVED_HEADROOM = 512  # context a served engine gets past the longest prompt: room for the answer
PROBE = "The quick brown fox jumps over the lazy dog. " * 8  # a short text every tokenizer splits cheaply


def served_model(checkpoint: Any, serve: str, build: bool = True) -> str:
    """What the engine loads: llama.cpp the GGUF file itself; vLLM and SGLang a GGUF's dequantised float32
    folder (harness.model.gguf.materialised: the weights the in-process engine and the probe use, built once;
    `build=False` names it without building it), any other model as given."""
    from harness.model import gguf

    path = str(checkpoint.path)
    if serve == "llama.cpp" or not gguf.is_gguf(path):
        return path
    return str(engine_folder(gguf.materialised(path))) if build else f"<float32 folder of {Path(path).name}>"


def engine_folder(folder: Path) -> Path:
    """The folder as vLLM and SGLang can load it, built once as a sibling `<folder>.engine` (its other files
    linked) where the harness's folder is not: the harness stores tied weights once (lm_head.weight, with
    model.embed_tokens.weight named as its alias in the safetensors metadata), and vLLM skips lm_head.* of a
    tied model and finds no embedding (measured: uniform log-probs), so each alias is stored under its own
    name; a config read from a GGUF file names no `architectures`, which SGLang indexes before anything else
    (TypeError), so the config gets its model type's causal-LM class."""
    import json
    import os
    import shutil

    weights, config = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file():
        return folder
    absent, architecture = _absent_aliases(weights), _missing_architecture(config)
    target = folder.with_name(folder.name + ".engine")
    if not absent and not architecture:
        return folder
    if (target / weights.name).is_file() and not _missing_architecture(target / config.name):
        return target
    building = target.with_name(f"{target.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        for item in folder.iterdir():
            if not (item == weights and absent) and not (item == config and architecture):
                (building / item.name).symlink_to(item)
        if absent:
            from safetensors.torch import load_file, save_file

            tensors = load_file(weights)
            tensors.update({alias: tensors[stored].clone() for alias, stored in absent.items()})
            save_file(tensors, building / weights.name)
        if architecture:
            settings = {**json.loads(config.read_text()), "architectures": [architecture]}
            (building / config.name).write_text(json.dumps(settings, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _absent_aliases(weights: Path) -> dict[str, str]:
    """{alias: stored name} of tensors the safetensors metadata names but the file stores once."""
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        keys, aliases = set(f.keys()), f.metadata() or {}
    return {alias: stored for alias, stored in aliases.items() if alias not in keys and stored in keys}


def _missing_architecture(config: Path) -> str | None:
    """The causal-LM class of the config's model type where the config names no architectures, else None."""
    import json

    settings = json.loads(config.read_text()) if config.is_file() else {}
    if settings.get("architectures") or not settings.get("model_type"):
        return None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(settings["model_type"])


def _argv(checkpoint: Any, serve: str, max_len: int, port: int, tensor_parallel: int, data_parallel: int,
          python: str | None = None, model: str | None = None, dtype: str | None = None) -> list[str]:
    """The argv that serves the checkpoint (or `model`, its weights) with its override on 127.0.0.1:port."""
    from harness.serving.engines import launch_command

    return launch_command(serve, model or checkpoint.path, checkpoint.override, max_len=max_len,
                          host="127.0.0.1", port=port, tensor_parallel=tensor_parallel,
                          data_parallel=data_parallel, config=checkpoint.source_config,
                          applied=checkpoint.config, python=python, dtype=dtype)


def launch_preview(checkpoint: Any, serve: str, max_len: int, tensor_parallel: int = 1,
                   data_parallel: int = 1, python: str | None = None, dtype: str | None = None) -> str:
    """The command `served` would run for this setting (the dry run's; the port is chosen at launch)."""
    argv = _argv(checkpoint, serve, max_len, 8000, tensor_parallel, data_parallel, python,
                 served_model(checkpoint, serve, build=False), dtype)
    at = argv.index("--port") + 1 if "--port" in argv else None
    return " ".join("<free port>" if i == at else a for i, a in enumerate(argv))


def engine_label(serve: str | None) -> str:
    """The engine named in records: the launched one, or 'server' for URLs given without --serve."""
    return serve or "server"


@contextlib.contextmanager
def served(checkpoint: Any, serve: str | None, urls: Sequence[str], *, max_len: int, log: Path,
           tensor_parallel: int = 1, data_parallel: int = 1, python: str | None = None,
           dtype: str | None = None) -> Iterator[tuple[ServedEngine, dict[str, Any]]]:
    """A ServedEngine on `urls`, or on a server of `serve` launched by `python` (--engine-python, else this
    interpreter) with the checkpoint's RoPE override (and stopped on exit, error or Ctrl-C), after one check
    that the server tokenises like the harness; with what ran it (`engine`, `engine_version`,
    `serve_command`, `server_urls`)."""
    from harness.serving.client import Client
    from harness.serving.engines import CAPABILITIES, engine_version
    from harness.serving.process import Server

    name = engine_label(serve)
    server = None
    if not urls:
        model = served_model(checkpoint, serve)
        server = Server(lambda port: _argv(checkpoint, serve, max_len, port, tensor_parallel, data_parallel,
                                           python, model, dtype), log=log)
        server.start()
    try:
        if server is not None:
            server.wait_ready(READY_TIMEOUT.get(serve, 300.0))
            urls = [server.url]
        tokenizer = checkpoint.tokenizer
        with Client(list(urls), decode=lambda ids: tokenizer.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)) as client:
            check_tokenizer(client, checkpoint.tokenizer, name)
            info = {"engine": name, "engine_version": engine_version(serve, python) if serve else None,
                    "serve_command": " ".join(server.argv) if server else None,
                    "server_urls": list(client.urls)}
            yield ServedEngine(client, engine=name, version=info["engine_version"],
                               scores=name in CAPABILITIES and CAPABILITIES[name].prompt_logprobs), info
    finally:
        if server is not None:
            server.stop()


def check_tokenizer(client: Any, tokenizer: Any, name: str) -> None:
    """The server's tokenisation of a probe equals the harness's (a leading BOS aside), else one line."""
    from harness.serving.client import tokenize

    theirs = tokenize(client.urls[0], PROBE)
    ours = list(tokenizer(PROBE, add_special_tokens=False)["input_ids"])
    if theirs[-len(ours):] != ours or len(theirs) - len(ours) > 1:
        raise RuntimeError(f"the {name} server at {client.urls[0]} tokenises text differently from the "
                           f"model's tokenizer ({len(theirs)} vs {len(ours)} ids for a probe): it serves "
                           "another model or tokenizer")


class UnavailableEngine(ServedEngine):
    """Stands in for a server that could not be started or reached (a rerun may heal its cells), or that does
    not serve the asked setting (`retry=False`: a rerun repeats it): every verb raises its one-line error,
    so the setting's cells are recorded as errors and the run goes on."""

    def __init__(self, engine: str, error: str, retry: bool = True):
        self.client, self.engine, self.version, self.scores, self.dtype = None, engine, None, False, "served"
        self.error, self.retry = error, retry

    def batch_size(self, length: int, generation: bool = False) -> int:
        return 1

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise (RuntimeError if self.retry else Refusal)(self.error)

    generate_batch = score_and_generate_batch = token_nll_batch = _fail
