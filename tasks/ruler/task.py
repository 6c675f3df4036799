"""One task class for every RULER family: options, measures, cells, prepare (every prompt built and checked
before any model loads), and scoring as RULER scores.

A family (niah.py, vt.py, aggregation.py, qa.py) says which options it takes with their RULER defaults
(`resolve`), what every cell shares (`prepare`: haystack streams, word lists, QA data) and how one cell's
prompt is made (`build`). Scores per cell: `score` (RULER's string_match_all or string_match_part of the
greedy answer, a fraction in [0, 1]), `matched` / `references`; where the answer is one fixed string, also
`answer_logprob` / `answer_rank` of it teacher-forced after the prompt, from the same prefill.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harness.core.metrics import MeasureSpec
from tasks.base import Cell, Option, Preflight, Prepared, RunContext, Task, TaskParams, batch_groups
from tasks.generation import CHAT_TEMPLATE, MAX_NEW_TOKENS, Wrap, prompt_wrap, stop_ids
from tasks.ruler.layout import RulerPrompt
from tasks.ruler.scoring import SCORERS, found

THRESHOLD = 0.5  # the default definition: as passkey's accuracy, so the two lengths compare
EFFECTIVE_THRESHOLD = 0.856  # RULER's effective length: Llama2-7B's score at 4K, 85.6 on RULER's 0-100 scale

SCORE = MeasureSpec(
    metric="score", name="RULER score", id="ruler-score", higher_is_better=True, factor=None,
    threshold=THRESHOLD, reference="tune_len", log_interp=False, chance_column="chance_score",
    console="score",
    description="RULER's per-sample score of the greedy answer to a prompt of exactly L tokens: the "
                "fraction of the references found in it (string_match_all; QA: 1 if any is found, "
                "string_match_part), case-insensitive; mean over depths per sample, then over samples")
EFFECTIVE = MeasureSpec(
    metric="score", name="RULER effective length", id="ruler-effective", higher_is_better=True,
    factor=None, threshold=EFFECTIVE_THRESHOLD, reference="tune_len", log_interp=False,
    chance_column="chance_score",
    description="longest L whose RULER score stays >= 0.856 (RULER's threshold, 85.6 on its 0-100 scale)")
LOGPROB = MeasureSpec(
    metric="answer_logprob", name="answer log-prob", id="ruler-logprob", higher_is_better=True,
    factor=None, delta=2.0, reference="tune_len", log_interp=False, chance_column="chance_logprob",
    description="sum of the log-probs of the one fixed answer string, teacher-forced after the prompt "
                "(nats); mean over depths per sample, then over samples")


class Family:
    """What one RULER config contributes to its task; subclasses override the four methods."""

    kind: str = ""  # RULER's task kind: niah, variable_tracking, common_words_extraction, ...
    options: tuple[Option, ...] = ()
    depth: bool = False  # the family has a needle position: --depths is a cell dimension
    fixed_answer: bool = False  # every answer is one fixed string: answer_logprob is measured

    def resolve(self, params: TaskParams) -> Any:
        """The options with RULER's defaults applied (a frozen dataclass; its fields are the identity)."""
        raise NotImplementedError

    def prepare(self, pre: Preflight, config: Any, wrap: Wrap) -> Any:
        """What every cell shares (haystacks, data); may raise InputError."""
        return None

    def available(self, shared: Any) -> int | None:
        """How many samples the data has (None: as many as asked)."""
        return None

    def build(self, tokenizer, wrap: Wrap, params: TaskParams, config: Any, shared: Any,
              cell: Cell) -> RulerPrompt:
        raise NotImplementedError


@dataclass
class RulerState:
    config: Any
    wrap: Wrap
    shared: Any
    prompts: dict[Cell, RulerPrompt] = field(default_factory=dict)


class RulerTask(Task):
    """A RULER config as a task: `name` is RULER's config name, `family` its generator."""

    generates = True
    family: Family = Family()

    def identity(self, params: TaskParams) -> dict[str, Any]:
        config = self.family.resolve(params)
        ident = {"bos": params.bos, "ruler": self.family.kind,
                 **{k: v for k, v in asdict(config).items() if k != "depths"}}
        if getattr(config, "haystack", None) not in (None, "noise", "essay", "needle"):
            ident["corpus"] = params.corpus
        return ident

    def cells(self, params: TaskParams) -> list[Cell]:
        config = self.family.resolve(params)
        depths = list(getattr(config, "depths", None) or [None])
        return [Cell(length, depth, sample) for length in sorted(set(params.lengths)) for depth in depths
                for sample in range(params.samples)]

    def prepare(self, pre: Preflight) -> Prepared[RulerState]:
        """Options, shared data and every cell's prompt, built and checked before any model loads."""
        config = self.family.resolve(pre.params)
        wrap = prompt_wrap(pre.tokenizer, pre.params.bos, bool(getattr(config, "chat_template", False)))
        state = RulerState(config, wrap, self.family.prepare(pre, config, wrap))
        available = self.family.available(state.shared)
        for cell in self.cells(pre.params):
            if available is None or cell.sample < available:
                state.prompts[cell] = self.family.build(pre.tokenizer, wrap, pre.params, config, state.shared,
                                                        cell)
        return Prepared(state, available if available is not None and available < pre.params.samples
                        else None)

    def build(self, ctx: RunContext, cell: Cell) -> RulerPrompt:
        state: RulerState = self.state_of(ctx)
        if cell not in state.prompts:
            state.prompts[cell] = self.family.build(ctx.tokenizer, state.wrap, ctx.params, state.config,
                                                    state.shared, cell)
        return state.prompts[cell]

    def groups(self, ctx: RunContext, cells: list[Cell]) -> list[list[Cell]]:
        return batch_groups(ctx.engine, [[c] for c in cells], generation=True)

    def score_group(self, ctx: RunContext, cells: list[Cell]) -> list[dict[str, Any]]:
        prompts = [self.build(ctx, cell) for cell in cells]
        stops = stop_ids(ctx.tokenizer, ctx.engine)
        results: list[Any] = [None] * len(prompts)
        runs: dict[tuple[int, bool], list[int]] = {}
        for i, prompt in enumerate(prompts):  # one verb call per budget and kind of answer
            runs.setdefault((prompt.max_new_tokens, prompt.answer_ids is not None), []).append(i)
        for (budget, forced), members in runs.items():
            ids = [prompts[i].ids for i in members]
            if forced:
                scored = ctx.engine.score_and_generate_batch(ids, [prompts[i].answer_ids for i in members],
                                                             budget, stop_ids=stops)
                outs = [(score, new, ran)
                        for (score, new), ran in zip(scored.values, scored.ran, strict=True)]
            else:
                generated = ctx.engine.generate_batch(ids, budget, stop_ids=stops)
                outs = [(None, new, ran) for new, ran in zip(generated.values, generated.ran, strict=True)]
            for i, out in zip(members, outs, strict=True):
                results[i] = out
        return [record(prompt, ctx.tokenizer.decode(new, skip_special_tokens=True), score, ran, len(new))
                for prompt, (score, new, ran) in zip(prompts, results, strict=True)]


def record(prompt: RulerPrompt, prediction: str, score: Any, ran: Any, generated: int) -> dict[str, Any]:
    """The cell's metrics: RULER's score of the prediction and, with a fixed answer, its log-prob."""
    hits = found(prediction, prompt.answers)
    out = dict(prompt.record)
    out.update(score=SCORERS[prompt.scorer](prediction, prompt.answers), matched=sum(hits),
               references=len(hits), scorer=prompt.scorer, answers=" | ".join(prompt.answers),
               prediction=prediction, generated_tokens=generated, max_new_tokens=prompt.max_new_tokens,
               chance_score=prompt.chance_score, prompt_tokens=len(prompt.ids))
    if prompt.answer_ids is not None and score is not None:
        out.update(answer_logprob=score.logprob, answer_rank=score.rank, answer_tokens=len(prompt.answer_ids),
                   chance_logprob=prompt.chance_logprob)
    out.update(plan=ran.plan, batch=ran.batch, prefix_reused=ran.prefix_reused)
    return out


def make_task(name: str, family: Family) -> RulerTask:
    """The task of one RULER config (options and measures are class attributes: the registry reads them
    from the class)."""
    measures = (SCORE, EFFECTIVE, LOGPROB) if family.fixed_answer else (SCORE, EFFECTIVE)
    cls = type(f"Ruler_{name}", (RulerTask,), {
        "name": name, "family": family, "options": (*family.options, MAX_NEW_TOKENS, CHAT_TEMPLATE),
        "measures": measures, "__doc__": f"RULER's {name} ({family.kind})."})
    return cls()
