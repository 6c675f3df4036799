"""The longqa task: options, measures, cells, and scoring of a source's prompts (see
tasks/longqa/__init__.py).

Scores (every record; `metric`/`score` name the dataset's headline): the metrics of metrics.py on the
greedy answer; the synthetic QA adds first-integer `match` and the teacher-forced `answer_logprob` /
`answer_rank` of the continuation " N" tokenised in context, as in the passkey task.
"""

from __future__ import annotations

import math
from typing import Any

from harness.core.contract import Ran
from harness.core.errors import InputError
from harness.core.metrics import MeasureSpec
from tasks.base import Cell, Option, Preflight, Prepared, RunContext, Task, TaskParams, batch_groups
from tasks.generation import CHAT_TEMPLATE, DEPTHS, MAX_NEW_TOKENS, first_integer, parse_depths, stop_ids
from tasks.longqa.longbench import DEFAULT_HF_DATASETS, PADS, LongBenchSource
from tasks.longqa.metrics import best_scores
from tasks.longqa.source import QAPrompt, Source
from tasks.longqa.synthetic import MAX_HOPS, SyntheticSource

MEASURE = MeasureSpec(
    metric="score",
    name="QA score",
    higher_is_better=True,
    factor=2.0,
    reference="tune_len",
    log_interp=False,
    chance=0.0,  # no overlap with any reference answer
    description="per question and length, the dataset's headline metric in [0, 1] "
                "(token F1 for QA, ROUGE-L for "
                "summaries, first-integer match for the synthetic QA) "
                "of the greedy answer to a prompt of exactly L "
                "tokens (context cut in the middle or padded); mean over questions",
)

# The synthetic QA's teacher-forced score; an absolute rule (answer probability >= 1/2) so that it is
# defined for log-probs (a relative factor makes no sense for negative numbers).
LOGPROB = MeasureSpec(
    metric="answer_logprob",
    name="answer log-prob",
    higher_is_better=True,
    factor=None,
    threshold=math.log(0.5),
    reference="tune_len",
    log_interp=False,
    chance_column="chance_logprob",  # a uniform guess over codes of the answer's digits: -digits * ln 10
    description="sum of the log-probs of the answer tokens, teacher-forced after the prompt (synthetic QA)",
)


class LongQATask(Task):
    name = "longqa"
    generates = True
    options = (
        Option("source", "longqa: LongBench-format data (a .jsonl file, a folder of <dataset>.jsonl, or a "
               "Hugging Face id); omitted: the offline synthetic QA over --corpus",
               metavar="FILE.jsonl|DIR|hf:ID"),
        Option("qa_datasets", "longqa: comma-separated LongBench datasets to run (default: all in --source; "
               f"hf: {','.join(DEFAULT_HF_DATASETS)})", metavar="NAMES"),
        Option("qa_hops", f"longqa synthetic: facts per question chain, 1 (single fact) to {MAX_HOPS} "
               "(multi-hop); questions cycle through the list (default 1,2)", metavar="H[,H...]"),
        Option("qa_distractors", "longqa synthetic: distractor facts per question (default 3)", type=int,
               metavar="N"),
        Option("qa_pad", "longqa LongBench: fill a context shorter than L "
               "with other rows' contexts of the same "
               "dataset (others, default), with --corpus text (corpus), "
               "or not at all (none: the prompt stays "
               "shorter than L)", choices=PADS),
        DEPTHS, MAX_NEW_TOKENS, CHAT_TEMPLATE,
    )
    measures = (MEASURE,)

    def __init__(self) -> None:
        self._cache: dict[Any, Any] = {}  # LongBench rows by (source, datasets): read once per task

    def source(self, params: TaskParams) -> Source:
        """The source the options name, options checked (an option of the other source is an InputError)."""
        o = params.options or {}
        kind = SyntheticSource if o.get("source") in (None, "", "synthetic") else LongBenchSource
        return kind(o, self._cache)

    def identity(self, params: TaskParams) -> dict[str, Any]:
        """Everything that changes a cell's result; --depths and --samples only add or drop cells."""
        return {"corpus": params.corpus, "bos": params.bos, **self.source(params).identity()}

    def cells(self, params: TaskParams) -> list[Cell]:
        if not params.lengths:
            raise InputError("longqa needs at least one length: pass --lengths L1,L2,...")
        if params.samples < 1:
            raise InputError(f"--samples {params.samples} must be >= 1")
        source = self.source(params)
        depths = parse_depths((params.options or {}).get("depths")) or [None]
        return [Cell(length, depth, s) for s in source.samples(params) for depth in depths
                for length in sorted(set(params.lengths))]

    def prepare(self, pre: Preflight) -> Prepared[Source]:
        """The prepared source is the state: its data, the fixed-parts check done."""
        source = self.source(pre.params)
        source.prepare(pre)
        return Prepared(source)

    def build(self, ctx: RunContext, cell: Cell) -> QAPrompt:
        """The prompt of one cell (exactly cell.length tokens, except `--qa-pad none` with a short
        context)."""
        source: Source = self.state_of(ctx)
        return source.build(cell)

    def groups(self, ctx: RunContext, cells: list[Cell]) -> list[list[Cell]]:
        """Cells of one length batched as the engine allows (prompts of exactly L tokens share forwards
        where they also share their generation budget and stop tokens: see `score_group`)."""
        return batch_groups(ctx.engine, [[c] for c in cells], generation=True)

    def score_group(self, ctx: RunContext, cells: list[Cell]) -> list[dict[str, Any]]:
        prompts = [self.build(ctx, cell) for cell in cells]
        eos = stop_ids(ctx.tokenizer, ctx.engine)
        stops = [eos + p.stop_ids for p in prompts]
        outputs: list[tuple[Any, list[int]]] = [(None, [])] * len(prompts)
        ran: list[Ran] = [Ran("", 1)] * len(prompts)
        # prompts of one length, budget and stops share a batched prefill: with an answer to teacher-force
        # (synthetic) its score and the generation from it, else (LongBench) the generation alone
        runs: dict[tuple, list[int]] = {}
        for i, prompt in enumerate(prompts):
            key = (len(prompt.ids), prompt.max_new_tokens, tuple(stops[i]), prompt.answer_ids is None)
            runs.setdefault(key, []).append(i)
        for (_, max_new_tokens, run_stops, free), members in runs.items():
            ids = [prompts[i].ids for i in members]
            if free:
                generated = ctx.engine.generate_batch(ids, max_new_tokens, list(run_stops))
                results, how = [(None, new) for new in generated.values], generated.ran
            else:
                scored = ctx.engine.score_and_generate_batch(ids, [prompts[i].answer_ids for i in members],
                                                             max_new_tokens, list(run_stops))
                results, how = scored.values, scored.ran
            for i, result, run in zip(members, results, how, strict=True):
                outputs[i], ran[i] = result, run
        return [self._record(prompt, scored, new, ctx.tokenizer.decode(new, skip_special_tokens=True), run)
                for prompt, (scored, new), run in zip(prompts, outputs, ran, strict=True)]

    @staticmethod
    def _record(prompt: QAPrompt, scored, new: list[int], text: str, ran: Ran) -> dict[str, Any]:
        if prompt.first_line:
            text = text.lstrip("\n").split("\n")[0]
        record = dict(prompt.record)
        scores = best_scores(text, prompt.answers)
        if prompt.answer_ids is not None:
            scores["match"] = float(first_integer(text) == prompt.answers[0])
            record.update(answer_logprob=scored.logprob, answer_rank=scored.rank,
                          answer_tokens=len(prompt.answer_ids),
                          chance_logprob=-len(prompt.answers[0]) * math.log(10.0))
        record.update(metric=prompt.metric, score=scores[prompt.metric], **scores, prediction=text,
                      generated_tokens=len(new), max_new_tokens=prompt.max_new_tokens, plan=ran.plan,
                      batch=ran.batch, prefix_reused=ran.prefix_reused)
        return record


TASK = LongQATask()
