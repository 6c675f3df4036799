"""The passkey task: options, measures, prepare (haystack + minimum-length check) and scoring.

Scores: greedy generation after chunked prefill, exact match of the first integer in up to
`max_new_tokens` new tokens (`correct`, `generated`); and `answer_logprob` / `answer_rank` of the
continuation " K" tokenised in context (sum of log-probs, worst 1-based rank over its tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from harness.core.errors import InputError
from harness.core.metrics import MeasureSpec
from tasks.base import Cell, Option, Preflight, Prepared, RunContext, Task, TaskParams, batch_groups
from tasks.generation import (
    CHAT_TEMPLATE,
    DEPTHS,
    MAX_NEW_TOKENS,
    first_integer,
    stop_ids,
)
from tasks.passkey.haystack import Haystack, corpus_haystack, filler_haystack
from tasks.passkey.layout import PasskeyPrompt, build_prompt, fixed_tokens, make_needles
from tasks.passkey.options import DEFAULT_KEY_DIGITS, HAYSTACKS, Options

MEASURE = MeasureSpec(
    metric="correct",
    name="passkey accuracy",
    higher_is_better=True,
    transform="identity",
    factor=None,
    threshold=0.5,
    reference="tune_len",
    log_interp=False,
    chance=0.0,  # exact match of a uniformly guessed key: 1/10^digits, nil at any resolution a grid shows
    description="share of cells whose greedy answer's first integer equals the key "
                "(Landmark-attention passkey, "
                "prompt of exactly L tokens), averaged over depths per sample, then over samples",
    id="passkey-accuracy",
    console="accuracy",
)

# Accuracy stays at 0 for a model that never retrieves the key (the zoo's tiny models), so it gives no
# length at all; the answer log-prob still falls where the model loses the key. delta = 2 nats: the key's
# probability drops e^2 ~ 7x below its best at L <= tune_len (the zoo's log-probs scatter ~1 nat from length
# to length with one sample and three depths).
LOGPROB = MeasureSpec(
    metric="answer_logprob",
    name="answer log-prob",
    id="passkey-logprob",
    higher_is_better=True,
    factor=None,
    delta=2.0,
    reference="tune_len",
    log_interp=False,
    chance_column="chance_logprob",  # a uniform guess over the keys: -digits * ln 10
    description="sum of the log-probs of the continuation ' K' tokenised in context (nats), "
                "averaged over depths "
                "per sample, then over samples",
)

MEASURES = [MEASURE, LOGPROB]


@dataclass(frozen=True)
class PasskeyState:
    """What prepare builds once per setting: the resolved options and the haystack every prompt reads (the
    filler's is tokenised on first use: at millions of tokens that takes seconds a refused cell never
    needs)."""

    options: Options
    corpus: Haystack | None  # a corpus haystack (its sample count is known at prepare); None: the filler
    tokenizer: Any = None
    longest: int = 0

    @cached_property
    def haystack(self) -> Haystack:
        return self.corpus if self.corpus is not None else filler_haystack(self.tokenizer, self.longest)


class PasskeyTask(Task):
    name = "passkey"
    generates = True
    options = (
        DEPTHS, MAX_NEW_TOKENS, CHAT_TEMPLATE,
        Option("key_digits", f"passkey: digits of each key (default {DEFAULT_KEY_DIGITS})", type=int,
               metavar="N"),
        Option("haystack", "passkey: Landmark filler sentences (default) or real text from --corpus",
               choices=HAYSTACKS),
        Option("needles", "passkey: hide N named keys at seeded depths and ask for one (default 1)", type=int,
               metavar="N"),
    )
    measures = tuple(MEASURES)

    def identity(self, params: TaskParams) -> dict[str, Any]:
        # depths are cells, not identity: adding depths resumes; the corpus matters only for its haystack
        o = Options.from_params(params)
        ident = {"bos": params.bos, "haystack": o.haystack, "key_digits": o.key_digits, "needles": o.needles,
                 "chat_template": o.chat_template, "max_new_tokens": o.max_new_tokens}
        if o.haystack == "corpus":  # sample i reads from i x max_length
            ident.update(corpus=params.corpus, max_length=max(params.lengths))
        return ident

    def cells(self, params: TaskParams) -> list[Cell]:
        options = Options.from_params(params)
        return [Cell(length, depth, sample) for length in sorted(params.lengths) for depth in options.depths
                for sample in range(params.samples)]

    def prepare(self, pre: Preflight) -> Prepared[PasskeyState]:
        """Options, the haystack stream and the minimum-length check, before any model is loaded."""
        params, tokenizer = pre.params, pre.tokenizer
        options = Options.from_params(params)
        longest = max(params.lengths)
        corpus = None
        if options.haystack == "filler":
            haystack = filler_haystack(tokenizer, 0)  # enough for the fixed parts' check
        else:
            haystack = corpus = corpus_haystack(tokenizer, params.corpus, longest, params.samples)
        minimum = max((fixed_tokens(tokenizer, make_needles(params.seed, cell.sample, cell.length, cell.depth,
                                                            options), options, params.bos, haystack)
                       for cell in self.cells(params)), default=0)
        short = [length for length in params.lengths if length < minimum]
        if short:
            raise InputError(f"--lengths {','.join(map(str, short))} "
                             "is below the passkey prompt's fixed parts "
                             f"(instruction, needles, question{', BOS' if params.bos else ''}): "
                             "use --lengths of "
                             f"at least {minimum} tokens for this tokenizer")
        state = PasskeyState(options, corpus, tokenizer, longest)
        available = len(corpus.sample_starts) if corpus is not None else None
        if available is not None and available < params.samples:
            pre.warn(f"corpus {params.corpus!r} has haystack text for only {available} passkey samples of "
                     f"{longest} tokens (asked {params.samples}): running those")
            return Prepared(state, available)
        return Prepared(state)

    def build(self, ctx: RunContext, cell: Cell) -> PasskeyPrompt:
        """The cell's prompt (seeded: the same cell always gets the same prompt)."""
        state: PasskeyState = self.state_of(ctx)
        prompt = build_prompt(ctx.tokenizer, cell.length, cell.depth, cell.sample, seed=ctx.params.seed,
                              bos=ctx.params.bos, options=state.options, haystack=state.haystack)
        if not prompt.roundtrip:
            ctx.warn("passkey: decoding and re-encoding a prompt changes its tokens with this tokenizer; "
                     "the model sees the prompt's own tokenisation (exactly L tokens)")
        if not prompt.answer_in_context:
            ctx.warn("passkey: this tokenizer merges the answer into the prompt's last token; answer_logprob "
                     "scores ' K' tokenised after the last word alone")
        return prompt

    def groups(self, ctx: RunContext, cells: list[Cell]) -> list[list[Cell]]:
        """Cells of one length (every prompt has exactly L tokens) batched as the engine allows."""
        return batch_groups(ctx.engine, [[c] for c in cells], generation=True)

    def score_group(self, ctx: RunContext, cells: list[Cell]) -> list[dict[str, Any]]:
        options = self.state_of(ctx).options
        prompts = [self.build(ctx, cell) for cell in cells]
        # one prefill per prompt (shared by equal-length prompts of a batch): the answer's teacher-forced
        # score and the greedy continuation share the prompt's cache
        scored = ctx.engine.score_and_generate_batch(
            [p.ids for p in prompts], [p.answer_ids for p in prompts], options.max_new_tokens,
            stop_ids=stop_ids(ctx.tokenizer, ctx.engine))
        out = []
        for prompt, (score, new), ran in zip(prompts, scored.values, scored.ran, strict=True):
            generated = ctx.tokenizer.decode(new, skip_special_tokens=True)
            answer = first_integer(generated)
            out.append({
                "key": prompt.key, "correct": answer == prompt.key, "generated": generated, "answer": answer,
                "answer_logprob": score.logprob, "answer_rank": score.rank,
                "answer_tokens": len(prompt.answer_ids),
                "chance_logprob": -options.key_digits * math.log(10.0),
                "needle_position": prompt.needle_position,
                "needle_depth": prompt.needle_depth, "haystack_tokens": prompt.haystack_tokens,
                "needles": options.needles, "needle_name": prompt.name, "haystack": options.haystack,
                "plan": ran.plan, "batch": ran.batch, "prefix_reused": ran.prefix_reused,
            })
        return out


TASK = PasskeyTask()
