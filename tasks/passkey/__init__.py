"""Passkey retrieval (the Landmark-attention format) on a length x depth grid, with two scores per cell.

Prompt (docs/design.md), lines joined by newlines as in Landmark attention:
    <instruction> \\n <filler ...> \\n <needle> \\n <filler ...> \\n What is the pass key? The pass key is
- exact length: the prompt is exactly L tokens of the model's own tokenizer, BOS included when used
  (haystack.py counts tokens, layout.py solves for the exact length).
- depth: the needle starts after round(depth x H) of the H haystack tokens, never mid-word (haystack
  pieces end at word boundaries): early by less than one word (late by the pad spaces at depth 1).
- keys: `key_digits` digits drawn from (seed, sample, length, depth): a rerun builds identical prompts.
- variants: `haystack = "corpus"` uses real text of the run's --corpus (sample i reads its own stretch of
  the corpus); `needles = N` hides N keys with different names at seeded extra depths and asks for one;
  `chat_template` wraps instruction, haystack and question as a user turn and starts the answer
  ("The pass key is") in the assistant turn; base models (the default) get the plain prompt.
Scores: see task.py.
"""

from tasks.generation import answer_tokens
from tasks.passkey.haystack import FILLER, Haystack, Stream, corpus_haystack, filler_haystack
from tasks.passkey.layout import (
    ANSWER_PREFIX,
    INSTRUCTION,
    NAMED_ANSWER_PREFIX,
    NAMED_NEEDLE,
    NAMED_QUESTION,
    NEEDLE,
    QUESTION,
    NeedleSpec,
    PasskeyPrompt,
    build_prompt,
    fixed_tokens,
    make_needles,
)
from tasks.passkey.options import DEFAULT_DEPTHS, DEFAULT_KEY_DIGITS, HAYSTACKS, NAMES
from tasks.passkey.task import (
    LOGPROB,
    MEASURE,
    MEASURES,
    TASK,
    Options,
    PasskeyState,
    PasskeyTask,
)

__all__ = ["ANSWER_PREFIX", "DEFAULT_DEPTHS", "DEFAULT_KEY_DIGITS", "FILLER", "HAYSTACKS", "INSTRUCTION",
           "LOGPROB", "MEASURE", "MEASURES", "NAMED_ANSWER_PREFIX", "NAMED_NEEDLE", "NAMED_QUESTION", "NAMES",
           "NEEDLE", "QUESTION", "TASK", "Haystack", "NeedleSpec", "Options", "PasskeyPrompt", "PasskeyState",
           "PasskeyTask", "Stream", "answer_tokens", "build_prompt", "corpus_haystack", "filler_haystack",
           "fixed_tokens", "make_needles"]
