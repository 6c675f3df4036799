"""The served-engine rows of benchmarks/gpu.py: vLLM and SGLang launched through harness.serving (the code
`rope-harness run --serve` runs) on the timing model's random weights with a YaRN override, against the
in-process Engine on the same weights and override, on passkey prompts of exact lengths.

The timing model is saved once (safetensors, bf16, a local byte-level tokenizer widened to the model's
vocabulary); the in-process reference runs first and is freed, since a server takes the card; then per
engine `served()` launches the server with the override, waits for it and stops it on leaving (errors and
Ctrl-C included). --smoke serves a tiny GGUF on llama.cpp's server instead (CPU, no vLLM needed). See
gpu.py's docstring for the flags and columns.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_common as bc

ENGINES = ("vllm", "sglang")
INSTALL = {"vllm": "pip install vllm", "sglang": "pip install sglang",
           "llama.cpp": "pip install 'llama-cpp-python[server]'"}
MODULE = {"vllm": "vllm", "sglang": "sglang", "llama.cpp": "llama_cpp"}
LENGTHS = (32768, 65536, 131072)
SMOKE_LENGTHS = (512, 1024, 2048)
SAFETY = 1.5  # projected seconds are padded by this factor, as in gpu.py's time box
REFERENCE_SHARE = 0.4  # of the time box for the in-process reference (model save and load included)
NONE = "n/a (engine returns none)"
COLUMNS = ["engine", "L", "prompts", "greedy: same first k tokens", "max abs answer log-prob diff (nats)",
           "prompt ppl: served vs in-process (each prompt)", "served tok/s", "in-process tok/s"]


@dataclass
class Measured:
    """One path's answers at one length: what the comparison reads."""

    seconds: float  # wall seconds of score_and_generate_batch over the length's prompts
    tokens: int  # prompt tokens sent in that call
    generated: list[list[int]]
    answer_logprobs: list[list[float]] | None  # teacher-forced, per answer token; None: the engine gives none
    ppl: list[float] | None  # of each prompt (tokens 1..L-1); None: the engine gives no prompt log-probs


@dataclass
class Setup:
    """What the in-process side and the projections need from gpu.py."""

    device: str
    dtype: str
    attn: str
    budget: int
    new_tokens: int  # greedy tokens generated and compared (k)
    cost: Callable[[int], float]  # model FLOPs of a pass of L tokens: scales one length's time to the next


def parse(text: str) -> list[str]:
    names = [e for e in text.split(",") if e]
    unknown = [e for e in names if e not in ENGINES]
    if unknown:
        raise SystemExit(f"gpu.py: unknown --engines {', '.join(unknown)}: use {', '.join(ENGINES)}")
    return names


def installed(names: Sequence[str]) -> list[str]:
    """The engines whose package is importable; one line printed for each that is not."""
    found = []
    for name in names:
        if importlib.util.find_spec(MODULE[name]) is None:
            print(f"{name} not installed: skipped ({INSTALL[name]})")
        else:
            found.append(name)
    return found


def free() -> None:
    """Drop the last model's memory before a server takes the card."""
    from harness.engine.memory_guard import free_accelerator_memory

    gc.collect()
    free_accelerator_memory()


def wide_tokenizer(vocab: int, bos: int, eos: int) -> Any:
    """A local byte-level tokenizer (no merges) with `vocab` ids: bytes at 0..255, <s>/</s> at bos/eos, the
    rest unused tokens, so that any id the random model generates decodes (engines detokenise them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = {symbol: byte for byte, symbol in bytes_to_unicode().items()}
    table.update({f"<unused{i}>": i for i in range(256, vocab)})
    table = {k: v for k, v in table.items() if v not in (bos, eos)}
    table.update({"<s>": bos, "</s>": eos})
    tok = Tokenizer(models.BPE(vocab=table, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def save_checkpoint(loaded: Any, folder: Path) -> Path:
    """The timing model and a wide tokenizer saved to `folder`; the model is then dropped from `loaded` (the
    server needs the card). EOS's output row is zeroed: greedy decoding never stops early on it."""
    import torch

    config = loaded.config
    with torch.no_grad():
        loaded.model.get_output_embeddings().weight[config.eos_token_id].zero_()
    loaded.model.save_pretrained(folder, safe_serialization=True)
    wide_tokenizer(config.vocab_size, config.bos_token_id, config.eos_token_id).save_pretrained(folder)
    loaded.model = None
    free()
    return folder


def smoke_checkpoint(folder: Path) -> Path:
    """The serving tests' tiny Llama GGUF in `folder`, generating only tokens whose text re-tokenises into
    the sampled ids (llama.cpp's server returns text, not ids)."""
    import os

    os.environ["ROPE_HARNESS_CACHE"] = str(folder / "cache")  # the in-process side dequantises it there
    sys.path.insert(0, str(bc.ROOT / "tests"))
    from serving_helpers import write_gguf

    return write_gguf(folder / "tiny.gguf", ascii_output=True)


def yarn_override(train_len: int, longest: int) -> Any:
    """YaRN with the smallest integer factor whose window (factor x train_len) holds the longest prompt."""
    from harness.model.rope_config import RopeOverride

    return RopeOverride(rope_type="yarn", factor=float(max(1, math.ceil(longest / train_len))))


def describe(path: Path, override: Any) -> Any:
    """The harness's Checkpoint of `path` with the override and its tokenizer, as the run plan builds it."""
    from harness.model import models

    checkpoint = models.describe(str(path), override)
    checkpoint = dataclasses.replace(checkpoint, tokenizer=models.load_tokenizer(str(path)))
    return checkpoint


def passkey_prompts(tokenizer: Any, lengths: Sequence[int], count: int) -> dict[int, list[Any]]:
    """`count` passkey prompts of exactly L tokens per length, needles at evenly spread depths."""
    from tasks.passkey import build_prompt

    return {n: [build_prompt(tokenizer, n, (i + 1) / (count + 1), i) for i in range(count)] for n in lengths}


def measure(engine: Any, prompts: list[Any], new_tokens: int) -> Measured:
    """score_and_generate_batch (timed) and, where the engine returns prompt log-probs, token_nll_batch."""
    ids, answers = [p.ids for p in prompts], [p.answer_ids for p in prompts]
    start = time.perf_counter()
    done = engine.score_and_generate_batch(ids, answers, new_tokens).values
    seconds = time.perf_counter() - start
    scores = [s.token_logprobs if s.logprob is not None else None for s, _ in done]
    ppl = None
    if getattr(engine, "scores", True):  # the in-process Engine always scores
        ppl = [math.exp(float(nll.double().mean())) for nll in engine.token_nll_batch(ids).values]
    return Measured(seconds, sum(map(len, ids)), [list(g) for _, g in done],
                    None if any(s is None for s in scores) else scores, ppl)


def over_box(last: tuple[int, float] | None, length: int, cost: Callable[[int], float],
             deadline: float) -> str | None:
    """Why `length` is skipped: its projected seconds (the last measured length's, scaled by model FLOPs,
    padded SAFETY) pass the deadline; None when it runs."""
    now = time.perf_counter()
    if last is None:
        return None if now < deadline else "skipped: the time box is spent"
    guess = SAFETY * last[1] * cost(length) / cost(last[0])
    return f"skipped: projected {guess:.0f} s passes the time box" if now + guess > deadline else None


def run_lengths(engine: Any, prompts: dict[int, list[Any]], warm: list[int], new_tokens: int,
                cost: Callable[[int], float], deadline: float) -> dict[int, Measured | str]:
    """Each length's Measured, or why it has none (skipped by the time box, or the one-line error)."""
    from harness.core.errors import one_line

    engine.generate_batch([warm], 1)  # warm-up: kernels, allocator, the client's connection
    out: dict[int, Measured | str] = {}
    last = None
    for length, batch in prompts.items():
        skip = over_box(last, length, cost, deadline)
        if skip:
            out[length] = skip
            continue
        start = time.perf_counter()
        try:
            out[length] = measure(engine, batch, new_tokens)
        except Exception as exc:  # one failed length (out of memory, a server error) leaves the others
            out[length] = f"failed: {one_line(exc, 160)}"
        last = (length, time.perf_counter() - start)
    return out


def in_process(checkpoint: Any, prompts: dict[int, list[Any]], warm: list[int], setup: Setup,
               deadline: float) -> dict[int, Measured | str]:
    """The reference: the harness Engine on the same weights and override; freed before any server starts."""
    from harness.core.errors import one_line
    from harness.engine.engine import Engine
    from harness.model import models

    try:
        engine = Engine(models.load(checkpoint, dtype=setup.dtype, device=setup.device, attn=setup.attn),
                        max_memory=setup.budget)
        return run_lengths(engine, prompts, warm, setup.new_tokens, setup.cost, deadline)
    except Exception as exc:  # no reference at all: every engine row says why, the script goes on
        return dict.fromkeys(prompts, f"failed: {one_line(exc, 160)}")
    finally:
        engine = None  # the model's last reference: freed before any server takes the card
        free()


def compare(name: str, length: int, ref: Measured | str, got: Measured | str, k: int) -> list[object]:
    """One table row: greedy agreement on the first k tokens, the answer log-prob gap, ppl, tokens/s."""
    if isinstance(ref, str) or isinstance(got, str):
        why = got if isinstance(got, str) else f"no in-process reference ({ref})"
        return [name, length, "", why, "", "", "", ""]
    pairs = list(zip(ref.generated, got.generated, strict=True))
    same = sum(a[:k] == b[:k] for a, b in pairs)
    equal = sum(x == y for a, b in pairs for x, y in zip(a[:k], b[:k], strict=False))
    gap = NONE
    if got.answer_logprobs is not None and ref.answer_logprobs is not None:
        gaps = [abs(x - y) for a, b in zip(ref.answer_logprobs, got.answer_logprobs, strict=True)
                for x, y in zip(a, b, strict=True)]
        gap = f"{max(gaps):.2e}"
    served = " / ".join(f"{p:,.1f}" for p in got.ppl) if got.ppl is not None else NONE
    ours = " / ".join(f"{p:,.1f}" for p in ref.ppl or [])
    return [name, length, len(pairs), f"{same}/{len(pairs)} ({equal}/{k * len(pairs)} tokens)", gap,
            f"{served} vs {ours}", f"{got.tokens / got.seconds:,.0f}", f"{ref.tokens / ref.seconds:,.0f}"]


def served_rows(name: str, checkpoint: Any, prompts: dict[int, list[Any]], warm: list[int],
                reference: dict[int, Measured | str], setup: Setup, deadline: float,
                log: Path) -> tuple[list[list[object]], str]:
    """The engine's rows (served through harness.serving.backend.served, the runner's own launch path:
    started with the override, stopped on leaving) and a note on its server."""
    from harness.core.errors import one_line
    from harness.serving.backend import SERVED_HEADROOM, served

    todo = {n: batch for n, batch in prompts.items() if isinstance(reference[n], Measured)}
    longest = max(len(p.ids) for batch in prompts.values() for p in batch)
    start = time.perf_counter()
    try:
        with served(checkpoint, name, [], max_len=longest + SERVED_HEADROOM, log=log) as (engine, info):
            note = (f"- {name} {info['engine_version']}: ready in {time.perf_counter() - start:.0f} s, "
                    f"stopped after its rows; `{info['serve_command']}`")
            got = run_lengths(engine, todo, warm, setup.new_tokens, setup.cost, deadline) if todo else {}
    except Exception as exc:  # refused override, server that never came up: one row, the run goes on
        return [[name, "", "", f"unavailable: {one_line(exc, 240)}", "", "", "", ""]], f"- {name}: no server"
    rows = [compare(name, n, reference[n], got.get(n, "not run"), setup.new_tokens) for n in prompts]
    return rows, note


def deadlines(start: float, box: float, engines: int) -> list[float]:
    """When the in-process reference must end (REFERENCE_SHARE of the box), then each engine (equal shares
    of the rest; time one phase leaves unused goes to the next)."""
    first = start + REFERENCE_SHARE * box
    return [first, *(first + (1 - REFERENCE_SHARE) * box * (i + 1) / engines for i in range(engines))]


def section(args: Any, loaded: Any, setup: Setup) -> None:
    """Print the served-engine section (a line per engine not installed; nothing else when none is)."""
    from harness.model.models import load_config

    engines = installed(args.engines)
    if args.smoke:  # llama.cpp's server on a tiny GGUF stands in: the section's every path, on CPU
        engines = installed(["llama.cpp"])
    if not engines:
        return
    started = time.perf_counter()
    until = deadlines(started, args.engine_time_box, len(engines))
    with tempfile.TemporaryDirectory(prefix="gpu-served-") as tmp:
        folder = Path(tmp)
        path = smoke_checkpoint(folder) if args.smoke else save_checkpoint(loaded, folder / "model")
        train = load_config(str(path)).max_position_embeddings
        checkpoint = describe(path, yarn_override(train, max(args.engine_lengths)))
        prompts = passkey_prompts(checkpoint.tokenizer, args.engine_lengths, args.engine_prompts)
        warm = passkey_prompts(checkpoint.tokenizer, [min(1024, *args.engine_lengths)], 1)
        warm_ids = next(iter(warm.values()))[0].ids
        reference = in_process(checkpoint, prompts, warm_ids, setup, until[0])
        rows, notes = [], []
        for i, name in enumerate(engines):
            got, note = served_rows(name, checkpoint, prompts, warm_ids, reference, setup,
                                    until[i + 1], folder / f"server-{name}.log")
            rows += got
            notes.append(note)
    print(intro(args, checkpoint, train, setup, time.perf_counter() - started))
    print("\n".join(notes) + "\n")
    print(bc.table(COLUMNS, rows))


def intro(args: Any, checkpoint: Any, train: int, setup: Setup, seconds: float) -> str:
    override = checkpoint.override
    stand_in = " (SMOKE: llama.cpp's server on a tiny GGUF stands in for vLLM/SGLang)" if args.smoke else ""
    return "\n".join([
        f"\n### Served engines vs the in-process engine: same weights, same RoPE override{stand_in}\n",
        f"- override: yarn factor {override.factor:g} over the checkpoint's {train} positions, served "
        f"context L + 512; {args.engine_prompts} passkey prompts of exactly L tokens per length, k = "
        f"{setup.new_tokens} greedy tokens; time box {args.engine_time_box:.0f} s "
        f"(section wall time {seconds:.0f} s)",
        "- random weights give near-uniform logits: greedy agreement on random weights is a numerics check, "
        "not an accuracy claim; the answer log-prob gap is the meaningful number",
        "- tok/s: prompt tokens / wall seconds of score_and_generate_batch (served with log-probs sends each "
        "prompt twice: greedy, then echo; a server may reuse the KV cache of the prefix the prompts of one "
        "length share up to the needle); ppl of each prompt's tokens 1..L-1, served (echoed log-probs) vs "
        "in-process (token_nll)",
    ])
