"""The engine contract: the verbs a task may call and what each returns (docs/design.md, "The engine").

Tasks see an engine only through this seam (lm-evaluation-harness's request/response split): the
in-process HF engine (`harness.engine.engine.Engine`) implements it, and so may a served engine. Every scoring
verb returns, beside its numbers, how each sequence was actually run (`Ran`), after any fallback the
engine took, so records carry the plan that ran, never one recomputed outside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

Value = TypeVar("Value")


@dataclass(frozen=True)
class Ran:
    """How one sequence was scored: the plan (`single`, `prefill:<chunk>`, `stream:<chunk>` ...), the rows
    that shared its forward, and the prompt tokens whose K/V came from the previous prompt's cache."""

    plan: str
    batch: int
    prefix_reused: int = 0


@dataclass(frozen=True)
class Scored(Generic[Value]):
    """A verb's answer: one value per sequence asked, and how each was run (same order)."""

    values: list[Value]
    ran: list[Ran]

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self):
        return iter(self.values)

    def __getitem__(self, index: int) -> Value:
        return self.values[index]


@dataclass(frozen=True)
class AnswerScore:
    logprob: float | None  # sum over the answer tokens (None: the engine returns no answer log-probs)
    rank: int | None  # worst (largest) 1-based rank of an answer token under the model (None: unknown)
    token_logprobs: list[float]


class PlanLike(Protocol):
    """What a caller may read of an engine's plan before scoring: does it fit the budget, and its estimate."""

    fits: bool
    estimate_bytes: int


class Engine(Protocol):
    """The verbs. Exactness: numbers equal a plain forward of exactly these tokens on a fresh model (RoPE
    fixed at the sequence's length where it depends on it), whatever plan or fallback ran."""

    dtype: str
    length_dependent: bool  # RoPE depends on the input length: one pass per length

    def plan(self, length: int, generation: bool = False) -> PlanLike:
        """The plan for `length` tokens (`generation`: the cache is kept for decoding); runs nothing."""

    def batch_size(self, length: int, generation: bool = False) -> int:
        """Sequences of `length` tokens that share one forward."""

    def token_nll_batch(self, sequences: Sequence[Sequence[int]]) -> Scored[Any]:
        """Per-token NLL (nats, float32 tensor of len(ids) - 1) of each sequence's ids[1:]."""

    def score_and_generate_batch(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                                 max_new_tokens: int, stop_ids: Sequence[int] = ()
                                 ) -> Scored[tuple[AnswerScore, list[int]]]:
        """Per prompt: the teacher-forced score of its answer and the greedy continuation (one prefill)."""

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       stop_ids: Sequence[int] = ()) -> Scored[list[int]]:
        """Per prompt: the greedy continuation (stops after a stop id or max_new_tokens)."""
