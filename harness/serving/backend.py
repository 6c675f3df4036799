"""The engine contract (harness/contract.py) answered by OpenAI-compatible servers, not an in-process model.

Prompts go as token ids (the client checks a text-only server tokenises them back identically), decoding is
greedy. Where the server returns prompt log-probs (`scores=True`: vLLM; llama-cpp-python only with
--logits_all, and at a cost that rules out long prompts: see harness/serving/client.py) answers are scored
teacher-forced from the echoed log-probs of prompt + answer; otherwise answer scores are None (recorded as
null) and perplexity is refused. The server owns its memory: every plan fits, and says which engine ran it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.contract import AnswerScore, Ran, Scored


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
