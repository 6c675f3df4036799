"""Exact per-token log-likelihoods for very long inputs, with bounded memory.

The only module that touches attention, caches and chunking (with `harness.engine.stream`, which only it
calls). It implements the engine contract (harness/core/contract.py, docs/design.md "The engine"):
`token_nll_batch` (teacher-forced loss of every token), `score_and_generate_batch` (an answer's log-prob
and rank after a prompt, and the greedy continuation, from one prefill), `generate_batch`, `plan` and
`batch_size`; each scoring verb returns the plan that ran, after its own out-of-memory fallbacks
(`_fallbacks`: a batch row by row, then a 4x smaller chunk). `token_nll`, `answer_score`, `generate` and
`score_and_generate` are the one-sequence forms.

Memory: the output head and cross-entropy run over sub-chunks of the final hidden states, so
[T, vocab] logits never exist. When even one decoder pass over T tokens would not fit `max_memory`,
the planner switches to layer-streamed scoring (`stream`: one decoder layer at a time over the whole
sequence, so only one layer's K/V is ever held) where the model family supports it, else to chunked
prefill through the KV cache. A prompt to generate after, whose plan streams, is prefilled
layer-streamed into the cache (every layer's K/V; on CUDA offloaded to the CPU layer by layer when it
would not fit the budget). The plan is a pure function of the model config, T, dtype and the budget,
never of momentary free memory, so reruns are reproducible.

Prefix reuse: a one-row generation prompt keeps its cache until the next verb; a next prompt that shares at
least half of its tokens with it (a passkey grid's keys at one depth) prefills only the rest on top of the
cropped cache (`harness.engine.prefix_cache`), and `Ran.prefix_reused` says how many tokens it took.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from harness.core.contract import AnswerScore, Ran, Scored
from harness.core.errors import one_line
from harness.core.heartbeat import detail
from harness.engine import stream
from harness.engine.decode import Prefilled, greedy, new_cache
from harness.engine.head import perplexity, postprocess_logits
from harness.engine.memory_guard import free_accelerator_memory, is_oom
from harness.engine.planner import ANSWER_HEAD_CHUNK, HEAD_CHUNK, STRATEGIES, Plan, batch_rows, make_plan
from harness.engine.prefix_cache import PrefixCache
from harness.model import models, rope_config

__all__ = ["AnswerScore", "Engine", "perplexity", "postprocess_logits"]
MIN_FALLBACK_CHUNK = 64  # the smallest chunk an out-of-memory fallback shrinks to


class Engine:
    """Scores token sequences with a loaded model; see the module docstring for the guarantees."""

    def __init__(self, loaded: models.Loaded, *, chunk_size: int | None = None, max_memory: int | None = None,
                 strategy: str = "auto", batch_size: int | str = 1, prefix_reuse: bool = True):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self.batch = batch_size  # rows per single-pass forward: a number, or "auto" (planner.batch_rows)
        self.model = loaded.model
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.dtype = loaded.dtype
        self.attn = loaded.attn
        self.chunk_size = chunk_size
        self.max_memory = max_memory
        self._prefix = PrefixCache(prefix_reuse)
        self._reused: list[int] = []  # per row prefilled by the current try: prompt tokens reused
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.length_dependent = rope_config.is_length_dependent(self.config)
        self.decoder = self.model.base_model
        self.head = self.model.get_output_embeddings()
        self.device = next(self.model.parameters()).device
        # transformers 5.24 renamed past_key_values to cache (5.23 knows only the old name)
        self.cache_kw = ("cache" if "cache" in inspect.signature(self.decoder.forward).parameters
                         else "past_key_values")
        self.self_check()
        if strategy == "stream":
            self._check_stream()
        layers = getattr(self.decoder, "layers", None) or []
        names = [f"layer {index + 1}/{len(layers)}" for index in range(len(layers))]
        for layer, name in zip(layers, names, strict=True):  # how far a long pass is: the heartbeat's line
            layer.register_forward_pre_hook(lambda *_, at=name: detail(at))

    # ---------------------------------------------------------------------------------- planning
    def plan(self, length: int, strategy: str | None = None, generation: bool = False,
             chunk: int | None = None) -> Plan:
        """The planner's plan for `length` tokens; `generation`: a prompt to generate after (its estimate
        counts the cache kept for decoding, offloaded only on CUDA)."""
        return make_plan(self.config, length, dtype=self.dtype, attn=self.attn, n_params=self.n_params,
                         max_memory=self.max_memory, chunk_size=chunk or self.chunk_size,
                         strategy=strategy or self.strategy, stream_ok=self.stream_exact,
                         generation=generation, cuda=self.device.type == "cuda")

    def batch_size(self, length: int, generation: bool = False) -> int:
        """Sequences of `length` tokens scored in one forward: `batch_rows` of the planner where the plan
        for one is a single pass, else 1 (stream and prefill plans exist because one row barely fits)."""
        if self.batch == 1 or self.plan(length, generation=generation).strategy != "single":
            return 1
        return batch_rows(self.config, length, self.batch, dtype=self.dtype, attn=self.attn,
                          n_params=self.n_params, max_memory=self.max_memory, generation=generation,
                          accelerator=self.device.type != "cpu")

    def _fallbacks(self, length: int, rows: int, generation: bool) -> Iterator[tuple[Plan, int]]:
        """(plan, rows per forward) to try in order: the planned one, then on out-of-memory the rows one by
        one, then one row with a 4x smaller chunk (a single pass becomes a chunked prefill)."""
        plan = self.plan(length, generation=generation)
        yield plan, rows
        if rows > 1:
            yield plan, 1
        smaller = max(MIN_FALLBACK_CHUNK, (plan.chunk or length) // 4)
        if smaller < (plan.chunk or length):
            strategy = "prefill" if plan.strategy == "single" else plan.strategy
            yield self.plan(length, strategy=strategy, generation=generation, chunk=smaller), 1

    def _scored(self, sequences: Sequence[Sequence[int]], generation: bool, score_rows,
                forced: Plan | None = None) -> Scored:
        """`score_rows(ids [n, L], indices, plan) -> n values` over runs of equal-length sequences (RoPE fixed
        at L where it depends on it), each run with the fallbacks of `_fallbacks` unless a plan is forced."""
        if not generation:
            self._prefix.clear()  # scoring keeps no cache: free the last prompt's before a long forward
        values, ran = [], []
        for run in self._batches(sequences, generation):
            tensor = torch.stack([self._tensor(sequences[i]) for i in run])
            tries = [(forced, len(run))] if forced else self._fallbacks(tensor.shape[1], len(run), generation)
            with self._rope_context(tensor.shape[1]):
                got, how = self._first_that_fits(tensor, list(run), tries, score_rows)
            values.extend(got)
            ran.extend(how)
        return Scored(values, ran)

    def _first_that_fits(self, tensor: torch.Tensor, indices: list[int], tries: Iterable[tuple[Plan, int]],
                         score_rows) -> tuple[list, list[Ran]]:
        """The values of the first (plan, rows) try that runs without out-of-memory (the last one's error
        propagates) and, per sequence, the plan that ran."""
        error: BaseException | None = None
        for plan, rows in tries:
            self._reused = []
            try:
                values = [value for s in range(0, len(indices), rows)
                          for value in score_rows(tensor[s:s + rows], indices[s:s + rows], plan)]
            except Exception as exc:
                if not is_oom(exc):
                    raise
                self._prefix.clear()
                free_accelerator_memory()
                error = exc
                continue
            reused = (self._reused + [0] * len(indices))[:len(indices)]
            return values, [Ran(str(plan), rows, shared) for shared in reused]
        raise error

    @torch.inference_mode()
    def self_check(self, tokens: int = 12) -> None:
        """Scoring runs decoder -> output head -> `postprocess_logits`, long inputs through chunked prefill:
        on a few tokens both must reproduce the model's own logits. Unknown logit scaling raises here; a
        family whose cache does not carry its state across multi-token chunks (Bamba's Mamba layers in
        transformers 5.x) is marked, and a prefill plan then raises instead of returning wrong numbers.
        Likewise a layer-streamed pass (query chunks of 5) must reproduce them, else `stream_exact` is False:
        the planner never picks stream for this model and a forced stream plan raises (`stream_refusal` says
        why)."""
        vocab = rope_config.text_config(self.config).vocab_size
        ids = self._tensor([i % vocab for i in range(1, tokens + 1)])
        self.prefill_exact = self.stream_exact = True
        self.stream_refusal = stream.model_refusal(self.model)
        with self._rope_context(tokens):
            want = self.model(input_ids=ids[None], use_cache=False).logits[0].float()
            single = self._logits(ids, Plan("single", tokens, 0))
            prefill = self._logits(ids, Plan("prefill", 5, 0))
            streamed = None
            if self.stream_refusal is None:
                try:
                    streamed = self._logits(ids, Plan("stream", 5, 0))
                except Exception as exc:  # a layer this pass cannot drive: refused, never guessed
                    self.stream_refusal = f"the layer-streamed pass failed ({one_line(exc, 160)})"
        tol = (1e-4 if self.dtype == "float32" else 3e-2) * (1 + float(want.abs().max()))
        if single.shape != want.shape or (single - want).abs().max() > tol:
            raise RuntimeError(f"{type(self.model).__name__}: the engine's output head does not reproduce "
                               "the model's logits (unknown logit post-processing): add this family to "
                               "engine.postprocess_logits")
        self.prefill_exact = bool((prefill - want).abs().max() <= tol)
        if streamed is not None and not (streamed - want).abs().max() <= tol:
            self.stream_refusal = "the layer-streamed pass does not reproduce the model's logits"
        self.stream_exact = self.stream_refusal is None

    def _logits(self, ids: torch.Tensor, plan: Plan) -> torch.Tensor:
        """Post-processed float32 logits of every position (short inputs only: [T, vocab])."""
        return torch.cat([postprocess_logits(self.config, self.head(h[0]).float())
                          for _, h in self._hidden_chunks(ids[None], plan)])

    def _check_prefill(self) -> None:
        if not self.prefill_exact:
            raise RuntimeError(f"{type(self.model).__name__}: chunked prefill through the cache is not exact "
                               "for this family: score in a single pass (no --chunk-size, a larger "
                               "--max-memory)")

    def _check_stream(self) -> None:
        if not self.stream_exact:
            raise RuntimeError(f"{type(self.model).__name__}: layer-streamed scoring (strategy stream) is "
                               f"refused for this model: {self.stream_refusal}; use strategy auto, single or "
                               "prefill")

    # ---------------------------------------------------------------------------------- internals
    def _hidden_chunks(self, ids: torch.Tensor, plan: Plan):
        """Yield (start, final hidden states [B, n, H]) of `ids` [B, T] covering every position, per the
        plan (stream: one row, B = 1)."""
        if plan.strategy == "single":
            out = self.decoder(input_ids=ids, use_cache=False)
            yield 0, out.last_hidden_state
            return
        if plan.strategy == "stream":
            self._check_stream()
            for start, hidden in stream.hidden_chunks(self.model, ids[0], plan.chunk):
                yield start, hidden[None]
            return
        self._check_prefill()
        cache = new_cache(self.model)
        for start in range(0, ids.shape[1], plan.chunk):
            out = self.decoder(input_ids=ids[:, start:start + plan.chunk], use_cache=True,
                               **{self.cache_kw: cache})
            yield start, out.last_hidden_state

    def _score(self, ids: torch.Tensor, first: int, with_rank: bool,
               plan: Plan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """NLL (float32) of ids[:, t+1] given ids[:, :t+1] for t in [first, T-1), per row of ids [B, T]
        ([B, T-1-first]); ranks when asked. The head and the loss run row by row in HEAD_CHUNK pieces."""
        rows, total = ids.shape
        nll = torch.empty(rows, total - 1 - first, dtype=torch.float32)
        ranks = torch.empty(rows, total - 1 - first, dtype=torch.long) if with_rank else None
        for start, hidden in self._hidden_chunks(ids, plan):
            stop = min(start + hidden.shape[1], total - 1)  # the last token predicts nothing
            for row in range(rows):
                for s in range(max(start, first), stop, HEAD_CHUNK):
                    e = min(s + HEAD_CHUNK, stop)
                    part, rank = self._head_nll(hidden[row, s - start:e - start], ids[row, s + 1:e + 1],
                                                with_rank)
                    nll[row, s - first:e - first] = part
                    if ranks is not None:
                        ranks[row, s - first:e - first] = rank
            del hidden
        return nll, ranks

    def _head_nll(self, hidden: torch.Tensor, target: torch.Tensor,
                  with_rank: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """NLL (float32, on CPU) of `target` [n] under the output head on `hidden` [n, H] (n <= HEAD_CHUNK),
        and the 1-based rank of each target token when asked."""
        logits = postprocess_logits(self.config, self.head(hidden).float())
        nll = F.cross_entropy(logits, target, reduction="none").cpu()
        if not with_rank:
            return nll, None
        return nll, (logits > logits.gather(1, target[:, None])).sum(1).cpu() + 1

    def _rope_context(self, length: int):
        if self.length_dependent:
            return models.rope_fixed_for_length(self.model, self.config, length)
        return contextlib.nullcontext()

    def _tensor(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.as_tensor(list(ids), dtype=torch.long, device=self.device)

    def _batches(self, sequences: Sequence[Sequence[int]], generation: bool) -> list[range]:
        """Consecutive runs of equal-length sequences, each at most `batch_size` long: what one forward
        scores (same-length rows need no padding, so every row's numbers are those of a forward alone)."""
        runs: list[range] = []
        start = 0
        while start < len(sequences):
            length = len(sequences[start])
            size = self.batch_size(length, generation)
            stop = start + 1
            while stop < len(sequences) and stop - start < size and len(sequences[stop]) == length:
                stop += 1
            runs.append(range(start, stop))
            start = stop
        return runs

    # ---------------------------------------------------------------------------------- verbs
    def token_nll(self, ids: Sequence[int], plan: Plan | None = None) -> torch.Tensor:
        """Per-token NLL (nats, float32, on CPU) of ids[1:], length len(ids) - 1.

        Length-dependent RoPE is fixed for len(ids): the numbers equal a plain forward of exactly
        these tokens on a freshly loaded model.
        """
        return self.token_nll_batch([ids], plan)[0]

    @torch.inference_mode()
    def token_nll_batch(self, sequences: Sequence[Sequence[int]],
                        plan: Plan | None = None) -> Scored[torch.Tensor]:
        """`token_nll` of each sequence; equal-length ones share a forward, `batch_size` rows at a time
        (a single-pass plan only; each row's numbers are those of its own forward). `plan` forces one plan
        (no fallback): the exactness tests compare plans with it."""
        return self._scored(sequences, False, lambda ids, _, chosen: self._score(ids, 0, False, chosen)[0],
                            forced=plan)

    @torch.inference_mode()
    def answer_score(self, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> AnswerScore:
        """Teacher-forced log-prob (sum) and worst rank of `answer_ids` after `prompt_ids`."""
        tensor = self._tensor([*prompt_ids, *answer_ids])
        first = len(prompt_ids) - 1
        if self.plan(tensor.numel(), generation=True).strategy != "single":
            self._prefix.clear()  # the budget holds this pass or a kept cache, not both
        with self._rope_context(tensor.numel()):
            nll, ranks = self._score(tensor[None], first, True, self.plan(tensor.numel()))
        return AnswerScore(float(-nll.sum()), int(ranks.max()), [float(-x) for x in nll[0]])

    @torch.inference_mode()
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int,
                 stop_ids: Sequence[int] = ()) -> list[int]:
        """Greedy continuation after a prefill of the prompt in the plan for its length (chunked, or
        layer-streamed into the cache; RoPE fixed at the prompt length when length-dependent)."""
        return self.generate_batch([prompt_ids], max_new_tokens, stop_ids)[0]

    @torch.inference_mode()
    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       stop_ids: Sequence[int] = ()) -> Scored[list[int]]:
        """`generate` of each prompt; equal-length prompts share the prefill and the greedy steps."""
        def continued(ids: torch.Tensor, _, plan: Plan) -> list[list[int]]:
            return greedy(self.model, self.cache_kw, *self._prefill(ids, plan), max_new_tokens, stop_ids)

        return self._scored(prompts, True, continued)

    def score_and_generate(self, prompt_ids: Sequence[int], answer_ids: Sequence[int], max_new_tokens: int,
                           stop_ids: Sequence[int] = ()) -> tuple[AnswerScore, list[int]]:
        """`answer_score(prompt_ids, answer_ids)` and `generate(prompt_ids, max_new_tokens, stop_ids)` from
        ONE prefill of the prompt: the prompt goes into the KV cache exactly as `generate` puts it there; the
        answer is teacher-forced on top of that cache (log-probs and ranks through the engine's head, as in
        `answer_score`, equal to its numbers up to float rounding), the cache is cropped back to the prompt
        and the greedy continuation runs from it (the very calls of `generate`: the same tokens).

        Length-dependent RoPE (dynamic, LongRoPE) fixes the frequencies for the whole input, which differs
        between the two (prompt + answer vs prompt): there the two verbs run as they are (two prefills).
        """
        return self.score_and_generate_batch([prompt_ids], [answer_ids], max_new_tokens, stop_ids)[0]

    @torch.inference_mode()
    def score_and_generate_batch(self, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                                 max_new_tokens: int, stop_ids: Sequence[int] = ()
                                 ) -> Scored[tuple[AnswerScore, list[int]]]:
        """`score_and_generate` of each (prompt, answer); equal-length prompts share the prefill, the
        teacher forcing (answers right-padded: a causal model's earlier positions never see the padding)
        and the greedy steps, `batch_size(generation=True)` rows at a time."""
        if any(not answer for answer in answers):
            raise ValueError("score_and_generate needs at least one answer token")
        if self.length_dependent:  # the frequencies of prompt + answer differ from the prompt's: two prefills
            generated = self.generate_batch(prompts, max_new_tokens, stop_ids)
            scores = [self.answer_score(p, a) for p, a in zip(prompts, answers, strict=True)]
            return Scored(list(zip(scores, generated.values, strict=True)), generated.ran)
        def both(ids: torch.Tensor, indices: list[int], plan: Plan) -> list[tuple[AnswerScore, list[int]]]:
            chosen = [answers[i] for i in indices]
            return self._score_and_generate(ids, chosen, max_new_tokens, stop_ids, plan)

        return self._scored(prompts, True, both)

    def _score_and_generate(self, prompt: torch.Tensor, answers: list[Sequence[int]], max_new_tokens: int,
                            stop_ids: Sequence[int], plan: Plan) -> list[tuple[AnswerScore, list[int]]]:
        """Score the answers of `prompt` [B, L] on top of its cache, crop back, then decode greedily."""
        rows, widest = prompt.shape[0], max(len(a) for a in answers)
        # the head's input on the last prefill chunk: hidden state of each row's last prompt token
        last: list[torch.Tensor] = []

        def keep(module, args):
            last[:] = [args[0][:, -1:]]

        hook = self.head.register_forward_pre_hook(keep)
        try:
            cache, out = self._prefill(prompt, plan)
        finally:
            hook.remove()
        if isinstance(out, Prefilled):  # a streamed prompt: the head's input is known
            last[:] = [out.hidden[:, None]]
        if not last:  # a head the model forward does not call as a module: no shared prefill, same numbers
            new = greedy(self.model, self.cache_kw, cache, out, max_new_tokens, stop_ids)
            return [(self.answer_score(p.tolist(), a), n)
                    for p, a, n in zip(prompt, answers, new, strict=True)]
        # right-pad with each answer's last token: rows run to the widest answer, real positions unchanged
        padded = self._tensor([[*a, *[a[-1]] * (widest - len(a))] for a in answers]).view(rows, widest)
        hidden = [last[0]]
        if widest > 1:
            if hasattr(cache, "activate_past_recording"):  # sliding-window layers keep what the crop restores
                cache.activate_past_recording()
            step = self.decoder(input_ids=padded[:, :-1], use_cache=True, **{self.cache_kw: cache})
            hidden.append(step.last_hidden_state)
        hidden = torch.cat(hidden, dim=1)
        scores = []
        for row, answer in enumerate(answers):
            ends = [(s, min(s + ANSWER_HEAD_CHUNK, len(answer)))
                    for s in range(0, len(answer), ANSWER_HEAD_CHUNK)]
            parts = [self._head_nll(hidden[row, s:e], padded[row, s:e], True) for s, e in ends]
            logprob = -torch.cat([nll for nll, _ in parts])
            scores.append(AnswerScore(float(logprob.sum()), int(torch.cat([r for _, r in parts]).max()),
                                      [float(x) for x in logprob]))
        del hidden
        if widest > 1:
            cache.crop(-(widest - 1))  # back to the prompt (a negative count: tokens to remove)
        new = greedy(self.model, self.cache_kw, cache, out, max_new_tokens, stop_ids)
        return list(zip(scores, new, strict=True))

    def _prefill(self, tensor: torch.Tensor, plan: Plan | None = None):
        """(cache holding the prompts [B, L], the output on their last position), in the generation plan for
        the prompt length (its estimate counts the cache): one pass when a single pass fits, the prefill
        plan's chunks through the cache, or, where the plan streams (one row), a layer-streamed prefill
        (`stream.prefill`: each layer's K/V goes into the cache as it is produced, activations stay one
        layer's; offloaded to the CPU layer by layer when the plan says so). The model's output
        (logits_to_keep=1) or a `Prefilled`; generation and teacher forcing run from the cache the same way
        after either."""
        rows, length = tensor.shape
        plan = plan or self.plan(length, generation=True)
        if plan.strategy == "stream":
            self._prefix.clear()
            self._reused.extend([0] * rows)
            self._check_stream()
            cache = new_cache(self.model, plan.offload)
            hidden = stream.prefill(self.model, tensor[0], plan.chunk, cache)
            logits = postprocess_logits(self.config, self.head(hidden).float())
            return cache, Prefilled(logits[None], hidden)
        chunk = plan.chunk if plan.strategy == "prefill" else length
        if chunk < length:
            self._check_prefill()
        ids = tensor.tolist()  # the prefix cache compares token lists: converted once per prefill
        shared, cache = self._prefix.take(ids, self.length_dependent)
        if cache is None:
            cache = new_cache(self.model)
        for start in range(shared, length, chunk):
            out = self.model(input_ids=tensor[:, start:start + chunk], use_cache=True, logits_to_keep=1,
                             **{self.cache_kw: cache})
        self._reused.extend([shared] * rows)
        if self.prefill_exact:
            self._prefix.keep(ids, cache, length)
        return cache, out
