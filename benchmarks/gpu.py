"""GPU: tokens/s, MFU and peak memory of the harness engine on a Llama-3-8B-shaped model (random bf16 weights,
built on the card: no download), per strategy (single / stream / prefill) and L (32K .. 1M), flash_attention_2
vs sdpa. Only where CUDA is present; elsewhere it prints one line and exits 0.

    python benchmarks/gpu.py [--lengths 32768,131072,524288,1048576] [--strategies single,stream,prefill]
                             [--attn flash_attention_2,sdpa] [--time-box 420] [--peak-tflops T]
                             [--batch-lengths 4096,16384] [--max-memory-gib G] [--plan-only [--card-gib 139]]
                             [--engines vllm,sglang] [--engine-lengths 32768,65536,131072]
                             [--engine-prompts 2] [--engine-new-tokens 9] [--engine-time-box 900] [--smoke]

Model: LlamaConfig(hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 KV heads, vocab 128256, RoPE theta
5e5), weights drawn on the device in bfloat16 (timing and memory do not depend on their values). Each cell
is ONE pass of Engine(loaded, strategy=S, max_memory=card).token_nll(L random tokens) after one short
warm-up per attention implementation; a cell is skipped, with the planner's estimate recorded, when that
estimate exceeds the card, and skipped as over the time box when its projected time (its model FLOPs at
the slowest rate measured so far for that strategy
and attention, padded 1.5x) would pass the deadline, so the whole run stays
under --time-box seconds of passes (default 420 s: < 8 min with the model build on one H100/H200).
Model FLOPs of one scoring pass (forward only, causal attention): 2 * N * L + 2 * layers * L^2 * (heads *
head_dim), N = non-embedding parameters plus the output head (PaLM appendix B convention).
MFU = model FLOPs / seconds / the card's dense bf16 peak (--peak-tflops, else a small table of known cards).
Batching rows (--batch-lengths): Engine(batch_size="auto") over as many same-length sequences as the planner
batches vs the same sequences one at a time (tokens/s of each, and the largest per-token NLL difference).
--plan-only prints the planner's table for the model on a card of --card-gib GiB (CPU; no weights).
Served engines (--engines, default vllm,sglang; '' for none; benchmarks/gpu_served.py): an engine whose
package is not importable prints "<engine> not installed: skipped (pip install <engine>)" and the script
goes on (exit 0). Otherwise the timing model is saved (safetensors, bf16, with a local byte-level tokenizer
of the model's vocabulary; EOS's output row zeroed), and --engine-prompts passkey prompts of exactly each
--engine-lengths L go through the in-process Engine (first, then freed) and through each engine launched by
harness.serving.backend.served, the very launch path of `rope-harness run --serve`, with the same RoPE
override (YaRN, the smallest integer factor with factor x 8192 >= the longest L: 16), stopped after its
rows. Columns: greedy (prompts whose first k = --engine-new-tokens greedy tokens are identical, and equal
tokens of all k-token prefixes); max abs answer log-prob diff (the largest per-token |difference| of the
teacher-forced answer log-probs, served from echoed prompt log-probs); prompt ppl served vs in-process
(exp mean NLL of tokens 1..L-1 from echoed log-probs vs token_nll); served / in-process tok/s (prompt tokens
over the wall time of score_and_generate_batch). Random weights give near-uniform logits: greedy agreement
is a numerics check, not an accuracy claim; the log-prob gap is the meaningful number. --engine-time-box
bounds the section (save, load and server starts included): 40% for the in-process reference, the rest
shared by the engines; a length whose projected time (as above) passes its share is skipped. This
workplace's GPU image has no vLLM or SGLang and their wheels exceed what can be carried there, so these
rows run only on a machine that has them; `--strategies "" --batch-lengths ""` runs the section alone.
--smoke runs every code path of the script on CPU with a tiny Llama (float32, lengths 1K/2K, batching at
512), so it is known to run before a GPU is at hand (tests/test_benchmarks.py runs it); its numbers mean
nothing. Its served section serves the serving tests' tiny GGUF on llama.cpp's server (lengths 512..2K,
YaRN factor 8; output rows kept only for ASCII bytes that start no merge, since that server returns text,
not ids), which returns no log-probs here: those columns read "n/a (engine returns none)".
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import time

import bench_common as bc
import gpu_served

PEAK_TFLOPS = {  # dense bf16/fp16 tensor-core peak, TFLOP/s (vendor datasheets); most specific first
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100": 756.0,
    "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0,
}
LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                 rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)
LENGTHS = (32768, 131072, 524288, 1048576)
STRATEGIES = ("single", "stream", "prefill")
ATTNS = ("flash_attention_2", "sdpa")
NO_CUDA = "no CUDA device: nothing to run"
SMOKE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             tie_word_embeddings=False)
SHAPE = LLAMA3_8B  # the model of this run (--smoke: SMOKE)
DEVICE, DTYPE = "cuda", "bfloat16"


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    """Peak device memory since reset_peak (CUDA max_memory_allocated; nan on CPU, where it is not read)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def peak_tflops(name: str, dtype: str, given: float | None) -> float | None:
    if given:
        return given
    if dtype == "float32":
        return None  # MFU against a tensor-core peak is meaningless in fp32
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def llama3_8b_config(attn: str = "sdpa"):
    import transformers

    config = transformers.LlamaConfig(**SHAPE,
                                      rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    config._attn_implementation = attn
    return config


def param_counts(config) -> tuple[int, int]:
    """(all parameters, model-FLOPs parameters N = non-embedding + output head), from a meta-device build."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return total, total - embed + (embed if tied else 0)


def model_flops(config, n_flops_params: int, length: int) -> float:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2.0 * n_flops_params * length + 2.0 * config.num_hidden_layers * length**2 * heads * head_dim


def plan_for(config, length: int, strategy: str, attn: str, n_params: int, budget: int):
    from harness.engine import planner

    return planner.make_plan(config, length, dtype=DTYPE, attn=attn, n_params=n_params,
                             max_memory=budget, strategy=strategy)


def plan_table(config, lengths, strategies, attn: str, n_params: int, budget: int) -> list[list[object]]:
    rows = []
    for length in lengths:
        for strategy in strategies:
            plan = plan_for(config, length, strategy, attn, n_params, budget)
            rows.append([length, strategy, str(plan), f"{plan.estimate_bytes / 2**30:.1f}",
                         "yes" if plan.fits else "no: skipped"])
    return rows


SAFETY = 1.5  # projected seconds are padded by this factor (a longer L or smaller chunk runs slower)


def projected_seconds(flops: float, rates: list[float]) -> float | None:
    """Seconds a pass of `flops` would take at the slowest measured rate (FLOP/s), padded by SAFETY; None
    before any rate was measured."""
    return SAFETY * flops / min(rates) if rates else None


def build_model(attn: str):
    """The model of SHAPE, random weights initialised on DEVICE in DTYPE, as a harness Loaded."""
    import torch
    import transformers

    from harness.model import models

    config = llama3_8b_config(attn)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, DTYPE))
    try:
        with torch.device(DEVICE):
            model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval()
    for module in model.modules():  # RoPE frequencies in float32, as models.load keeps them
        for name, buffer in list(module.named_buffers(recurse=False)):
            if name.endswith("inv_freq"):
                setattr(module, name, buffer.float())
    return models.Loaded(model=model, tokenizer=None, config=model.config, manifest={}, fingerprint="random",
                         device=DEVICE, dtype=DTYPE, attn=attn)


def set_attn(loaded, attn: str) -> None:
    if hasattr(loaded.model, "set_attn_implementation"):
        loaded.model.set_attn_implementation(attn)
    else:
        loaded.model.config._attn_implementation = attn
    loaded.attn = attn


def free() -> None:
    import torch

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def run_cells(args, loaded, n_flops: int, peak: float | None, budget: int,
              deadline: float) -> list[list[object]]:
    import torch

    from harness.core.errors import one_line
    from harness.engine import engine

    rows = []
    vocab = loaded.config.vocab_size
    for attn in args.attn:
        if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            rows.append([attn, "", "", "", "unavailable: flash-attn not installed", "", "", "", ""])
            continue
        try:
            set_attn(loaded, attn)
            engines = {s: engine.Engine(loaded, strategy=s, max_memory=budget) for s in args.strategies
                       if s != "stream"}
            if "stream" in args.strategies:
                try:
                    engines["stream"] = engine.Engine(loaded, strategy="stream", max_memory=budget)
                except Exception as exc:
                    rows.append([attn, "", "stream", "", f"unavailable: {one_line(exc, 120)}",
                                 "", "", "", ""])
            warm = next(iter(engines.values()), None)
            if warm is not None:
                warm.token_nll(bc.random_ids(min(4096, min(args.lengths)), vocab=vocab))
            sync()  # warm-up: kernels, allocator
        except Exception as exc:
            rows.append([attn, "", "", "", f"unavailable: {one_line(exc, 140)}", "", "", "", ""])
            free()
            continue
        rates: dict[str, list[float]] = {}  # FLOP/s measured per strategy
        for length in args.lengths:
            flops = model_flops(loaded.config, n_flops, length)
            for strategy in args.strategies:
                eng = engines.get(strategy)
                if eng is None:
                    continue
                plan = eng.plan(length)
                est = f"{plan.estimate_bytes / 2**30:.1f}"
                if not plan.fits:
                    rows.append([attn, length, strategy, str(plan),
                                 "skipped: planner estimate exceeds the card", "", "", "", est])
                    continue
                known = rates.get(strategy) or [r for v in rates.values() for r in v]
                guess = projected_seconds(flops, known)
                if guess is not None and time.perf_counter() + guess > deadline:
                    rows.append([attn, length, strategy, str(plan),
                                 f"skipped: projected {guess:.0f} s passes the time box", "", "", "", est])
                    continue
                ids = bc.random_ids(length, vocab=vocab)
                free()
                reset_peak()
                error = None
                start = time.perf_counter()
                try:
                    eng.token_nll(ids, plan)
                    sync()
                except torch.OutOfMemoryError:
                    error = "out of memory"
                except Exception as exc:
                    error = one_line(exc, 120)
                seconds = time.perf_counter() - start
                mem = peak_gib()
                free()  # outside the except blocks: the failed pass's tensors are released by now
                if error:
                    rows.append([attn, length, strategy, str(plan), f"failed: {error}", "", "", f"{mem:.1f}",
                                 est])
                    continue
                rates.setdefault(strategy, []).append(flops / seconds)
                mfu = f"{100 * flops / seconds / (peak * 1e12):.1f}%" if peak else "n/a"
                rows.append([attn, length, strategy, str(plan), f"{seconds:.2f}", f"{length / seconds:,.0f}",
                             mfu, f"{mem:.1f}", est])
        del engines
        free()
    return rows


def batch_cells(args, loaded, budget: int) -> list[list[object]]:
    """Batched (auto) vs one at a time at each of --batch-lengths, sdpa: tokens/s, rows, NLL agreement."""
    from harness.engine import engine

    set_attn(loaded, "sdpa")
    one = engine.Engine(loaded, max_memory=budget)
    many = engine.Engine(loaded, max_memory=budget, batch_size="auto")
    vocab, rows = loaded.config.vocab_size, []
    for length in args.batch_lengths:
        size = many.batch_size(length)
        seqs = [bc.random_ids(length, seed=s, vocab=vocab) for s in range(max(size, 2))]
        times = {}
        for name, eng in (("one", one), ("batched", many)):
            eng.token_nll_batch(seqs[:1])  # warm-up at this length
            sync()
            reset_peak()
            start = time.perf_counter()
            nll = eng.token_nll_batch(seqs)
            sync()
            times[name] = (time.perf_counter() - start, peak_gib(), nll)
        diff = max(float((a - b).abs().max()) for a, b in zip(times["one"][2], times["batched"][2],
                                                              strict=True))
        tokens = len(seqs) * length
        rows.append([length, size, len(seqs), f"{tokens / times['one'][0]:,.0f}",
                     f"{tokens / times['batched'][0]:,.0f}", f"{times['one'][0] / times['batched'][0]:.2f}",
                     f"{times['one'][1]:.1f} / {times['batched'][1]:.1f}", f"{diff:.1e}"])
        free()
    return rows


def parse_args() -> argparse.Namespace:
    """The command line, lists parsed; --smoke switches SHAPE, DEVICE and DTYPE to the tiny CPU run."""
    global SHAPE, DEVICE, DTYPE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--attn", default=",".join(ATTNS))
    parser.add_argument("--time-box", type=float, default=420.0, help="seconds of passes, all cells together")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense peak for MFU")
    parser.add_argument("--max-memory-gib", type=float, default=None,
                        help="planner budget (default: the card's total memory)")
    parser.add_argument("--batch-lengths", default="4096,16384", help="lengths of the batching rows")
    parser.add_argument("--smoke", action="store_true",
                        help="run every code path on CPU with a tiny model (the script's own check)")
    parser.add_argument("--plan-only", action="store_true", help="print the planner table only (no CUDA)")
    parser.add_argument("--card-gib", type=float, default=139.0, help="card memory for --plan-only")
    parser.add_argument("--engines", default=",".join(gpu_served.ENGINES),
                        help="served engines compared with the in-process engine ('' for none)")
    parser.add_argument("--engine-lengths", default=",".join(map(str, gpu_served.LENGTHS)))
    parser.add_argument("--engine-prompts", type=int, default=2, help="passkey prompts per length")
    parser.add_argument("--engine-new-tokens", type=int, default=9, help="greedy tokens compared (k)")
    parser.add_argument("--engine-time-box", type=float, default=900.0,
                        help="seconds for the engines section, model save and server starts included")
    args = parser.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    args.strategies = [s for s in args.strategies.split(",") if s]
    args.attn = [a for a in args.attn.split(",") if a]
    args.batch_lengths = [int(x) for x in args.batch_lengths.split(",") if x]
    args.engines = gpu_served.parse(args.engines)
    args.engine_lengths = [int(x) for x in args.engine_lengths.split(",") if x]
    if args.smoke:
        SHAPE, DEVICE, DTYPE = SMOKE, "cpu", "float32"
        args.lengths, args.batch_lengths, args.time_box = [1024, 2048], [512], min(args.time_box, 60.0)
        args.engine_lengths = list(gpu_served.SMOKE_LENGTHS)
        args.engine_time_box = min(args.engine_time_box, 120.0)
    return args


def main() -> int:
    args = parse_args()
    if args.plan_only:
        config = llama3_8b_config()
        total, _ = param_counts(config)
        budget = int((args.max_memory_gib or args.card_gib) * 2**30)
        print(f"Llama-3-8B shape, {total / 1e9:.2f} B parameters, bf16, budget {budget / 2**30:.0f} GiB")
        print(bc.table(["L", "strategy", "plan", "estimate GiB", "fits"],
                       plan_table(config, args.lengths, args.strategies, "sdpa", total, budget)))
        return 0

    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    started = time.perf_counter()
    name = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU (smoke run)"
    peak = peak_tflops(name, DTYPE, args.peak_tflops)
    card = torch.cuda.get_device_properties(0).total_memory if DEVICE == "cuda" else 8 * 2**30
    budget = int(args.max_memory_gib * 2**30) if args.max_memory_gib else card
    first = next((a for a in args.attn if a != "flash_attention_2" or importlib.util.find_spec("flash_attn")),
                 "sdpa")
    loaded = build_model(first)
    total, n_flops = param_counts(loaded.config)
    built = time.perf_counter() - started
    shape = ", ".join(f"{k}={v}" for k, v in SHAPE.items() if k.endswith(("size", "layers", "heads")))
    what = "a tiny Llama (SMOKE RUN: checks the script, numbers mean nothing)" if args.smoke else \
        "Llama-3-8B shape"
    print(bc.header(f"GPU: {what}, tokens/s, MFU and peak memory per strategy and L",
                    where=f"{DTYPE}, {DEVICE}",
                    model=f"random weights ({total / 1e9:.3f} B parameters, {shape})"))
    print(f"- GPU: {name}, {card / 2**30:.0f} GiB, CUDA {torch.version.cuda}; planner budget "
          f"{budget / 2**30:.0f} GiB; dense peak used for MFU: "
          f"{f'{peak:g} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}; flash-attn "
          f"{'installed' if importlib.util.find_spec('flash_attn') else 'not installed'}")
    print(f"- one pass of Engine(strategy=S).token_nll per cell after one warm-up pass (4K, or the shortest "
          "L) per attention; "
          f"model built on the card in {built:.0f} s; time box {args.time_box:.0f} s of passes\n")
    rows = run_cells(args, loaded, n_flops, peak, budget, time.perf_counter() + args.time_box)
    print(bc.table(["attention", "L", "strategy", "plan", "seconds", "tokens/s", "MFU", "peak GPU GiB",
                    "planner estimate GiB"], rows))
    if args.batch_lengths:
        print("\n### Batching (sdpa): --batch-size auto vs one sequence a forward\n")
        print(bc.table(["L", "rows per forward (auto)", "sequences", "one at a time tok/s", "batched tok/s",
                        "speed-up", "peak GPU GiB (one / batched)", "max per-token NLL difference"],
                       batch_cells(args, loaded, budget)))
    if args.engine_lengths:
        config = loaded.config  # the section drops loaded.model once saved (the server needs the card)
        gpu_served.section(args, loaded, gpu_served.Setup(
            DEVICE, DTYPE, first, budget, args.engine_new_tokens,
            lambda length: model_flops(config, n_flops, length)))
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
