"""Peak memory (RSS) of scoring L tokens: the harness engine vs `model(ids, labels=ids)` vs
lm-evaluation-harness; then the engine's strategies (single / stream / prefill), the planner's estimate vs the
measured peak.

Every measurement runs in its own child process (a fresh interpreter: peaks do not leak between
measurements). The child reads its own peak RSS from /proc/self/status (VmHWM) once after loading the
model and once after the pass; the table shows both the total peak and the pass's increment over the
loaded model. Linear memory in L means the increment doubles (x2.0) when L doubles; quadratic, x4.

The strategy table runs on two models of its own (a deep MHA one, where every layer's K/V is as wide as
the hidden state, and a GQA one); its children fork from a server that has imported torch once
(multiprocessing forkserver: a fresh process per measurement, without ~5 s of imports each). With CUDA
(--device cuda) it also reads torch.cuda.max_memory_allocated above the loaded model. On CPU its children
measure live tensors, not allocator slack: glibc unmaps freed tensors (`memory_guard.return_freed_tensors`,
what a CPU run under --max-memory does) and the peak is reset once the engine is built (its self-check's
transient would otherwise hide part of the pass). Its generation rows
measure `Engine.generate(ids, 4)` with the prompt layer-streamed into the KV cache against the planner's
generation estimate (`plan(L, generation=True)`: the stream pass + the cache kept for decoding). A last
table measures the other paths the planner models at 4K: sliding windows (Mistral; Gemma2, with full
layers too), eager attention and softcapping.

    python benchmarks/memory.py [--lengths 2048,4096,8192,16384] [--strategy-lengths 2048,...,65536]
                                [--generation-lengths 4096,16384] [--part all|methods|strategies]
                                [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_common as bc

METHODS = {
    "harness": "rope-harness Engine.token_nll (single pass, head + loss in 1,024-token chunks)",
    "labels": "model(ids, labels=ids) under torch.no_grad()",
    "lm-eval": "lm-evaluation-harness HFLM.loglikelihood_rolling, max_length=L, batch 1",
}


# the strategy table's models (random Llamas; a 4,096-token vocabulary keeps the output-head sub-chunk,
# the same for every strategy, from hiding what grows with L)
STRATEGY_VOCAB = 4096
STRATEGY_MODELS = {
    "deep-mha": dict(vocab_size=STRATEGY_VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=24,
                     num_attention_heads=2, num_key_value_heads=2),
    "gqa": dict(vocab_size=STRATEGY_VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=2),
}
STRATEGIES = ("single", "stream", "prefill")
STRATEGY_CHUNK = 4096  # query tokens per chunk for stream and prefill alike (the stream planner's largest)
GENERATE = "generate"  # the generation rows: strategy stream, generate(ids, NEW_TOKENS) after the prompt
NEW_TOKENS = 4


SIDE_BY_SIDE = 32768  # the stream-vs-prefill-vs-single targets' length (the longest when absent)


def side_by_side_length(lengths: list[int]) -> int:
    return SIDE_BY_SIDE if SIDE_BY_SIDE in lengths else max(lengths)


def vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_kb() -> int:
    """Return freed heap to the kernel and reset VmHWM to the current RSS (Linux >= 4.0, clear_refs 5), so
    the peak after a pass is measured above what is live now, not above an earlier transient (the
    engine's self-check)."""
    from harness.engine import memory_guard

    memory_guard.return_freed_tensors()
    Path("/proc/self/clear_refs").write_text("5")
    return vm_hwm_kb()


def child(method: str, length: int, model_dir: str) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    result = {"method": method, "length": length}
    if method == "harness":
        from harness.engine import engine
        from harness.model import models, rope_config

        loaded = models.load(model_dir, rope_config.RopeOverride(), dtype="float32", device="cpu",
                             attn="sdpa")
        eng = engine.Engine(loaded)
        ids = bc.random_ids(length)
        result["load_kb"] = vm_hwm_kb()
        result["plan"] = str(eng.plan(length))
        result["ppl"] = engine.perplexity(eng.token_nll(ids))
    elif method == "labels":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                     attn_implementation="sdpa").eval()
        ids = torch.tensor([bc.random_ids(length)])
        result["load_kb"] = vm_hwm_kb()
        with torch.no_grad():
            result["ppl"] = float(torch.exp(model(ids, labels=ids).loss))
    elif method == "lm-eval":
        import random
        import string

        try:
            from lm_eval.api.instance import Instance
            from lm_eval.models.huggingface import HFLM
        except Exception as exc:  # not installed, or broken against this transformers
            return {**result,
                    "error": f"import lm_eval failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                     attn_implementation="sdpa").eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        try:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=length, batch_size=1, device="cpu",
                      add_bos_token=False)
            # the byte tokenizer: one token per character; the rolling window is BOS + the first L-1 tokens
            # (exactly L tokens in one forward), scoring all L tokens
            text = "".join(random.Random(0).choice(string.ascii_letters) for _ in range(length))
            assert len(lm.tok_encode(text)) == length, "expected one token per character"
            result["load_kb"] = vm_hwm_kb()
            request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
            (loglik,) = lm.loglikelihood_rolling([request], disable_tqdm=True)
            result["ppl"] = float(torch.exp(torch.tensor(-loglik / length)))
        except Exception as exc:
            return {**result,
                    "error": f"lm-eval failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    else:
        raise SystemExit(f"unknown method {method}")
    result["peak_kb"] = vm_hwm_kb()
    return result


def measure(method: str, length: int, model_dir: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", method, str(length), str(model_dir)],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return {"method": method, "length": length, "error": f"child exit {proc.returncode}: {tail}"}
    return {**json.loads(lines[-1]), "seconds": time.perf_counter() - start}


def gib(kb: int) -> str:
    return f"{kb / 2**20:.2f}"


def report(results: dict[tuple[str, int], dict], lengths: list[int]) -> str:
    rows = []
    for method in METHODS:
        prev = None
        for length in lengths:
            r = results[(method, length)]
            if "error" in r:
                rows.append([method, length, f"unavailable: {r['error']}", "", "", ""])
                prev = None
                continue
            inc = r["peak_kb"] - r["load_kb"]
            growth = f"x{inc / prev:.2f}" if prev else ""
            labels = results[("labels", length)]
            ratio = f"{r['peak_kb'] / labels['peak_kb']:.3f}" if "peak_kb" in labels else ""
            rows.append([method, length, gib(r["peak_kb"]), gib(inc), growth, ratio])
            prev = inc
    return bc.table(["method", "L", "peak RSS GiB", "pass increment GiB (peak - after load)",
                     "increment growth per doubling of L", "peak / labels= peak"], rows)


# ------------------------------------------------------------------------------ strategies


def strategy_child(model_dir: str, strategy: str, length: int, device: str, queue, attn: str = "sdpa",
                   chunk: int = STRATEGY_CHUNK) -> None:
    """One strategy measurement in a child forked from the server (nothing computed before the fork)."""
    result: dict = {"strategy": strategy, "length": length}
    try:
        from harness.engine import engine, memory_guard
        from harness.model import models

        memory_guard.return_freed_tensors()  # as a CPU run under --max-memory: RSS follows the live tensors
        import torch

        from harness.model.rope_config import RopeOverride

        start = time.perf_counter()
        loaded = models.load(model_dir, RopeOverride(), dtype="float32", device=device, attn=attn)
        generate = strategy == GENERATE
        eng = engine.Engine(loaded, strategy="stream" if generate else strategy,
                            chunk_size=None if strategy == "single" else chunk)
        ids = bc.random_ids(length, vocab=STRATEGY_VOCAB)
        plan = eng.plan(length, generation=generate)
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            floor = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        result.update(plan=str(plan), estimate=plan.estimate_bytes - eng.n_params * 4,
                      load_kb=reset_peak_kb())
        if generate:
            result["new"] = eng.generate(ids, NEW_TOKENS)
        else:
            result["nll"] = eng.token_nll(ids, plan).double().mean().item()
        if cuda:
            torch.cuda.synchronize()
            result["cuda_peak"] = torch.cuda.max_memory_allocated() - floor
        result.update(peak_kb=vm_hwm_kb(), seconds=time.perf_counter() - start)
    except Exception as exc:  # reported in the table
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    queue.put(result)


def in_child(ctx, model_dir: Path, strategy: str, length: int, device: str, *more) -> dict:
    """`strategy_child`'s result, measured in a fresh child (an error entry when it dies without one)."""
    queue = ctx.Queue()
    proc = ctx.Process(target=strategy_child, args=(str(model_dir), strategy, length, device, queue, *more))
    proc.start()
    try:
        r = queue.get(timeout=3600)
    except Exception:
        r = {"strategy": strategy, "length": length, "error": f"child exit {proc.exitcode} without a result"}
    proc.join()
    return r


def within_2x(ratios: list[tuple[float, str]], cells: int) -> bool:
    """Every one of `cells` measured, each measured / estimate in [0.5, 1]: conservative and within 2x."""
    return len(ratios) == cells and all(0.5 <= r <= 1 for r, _ in ratios)


def worst(ratios: list[tuple[float, str]]) -> str:
    return (f"highest {max(ratios)[0]:.2f} ({max(ratios)[1]}), lowest {min(ratios)[0]:.2f} ({min(ratios)[1]})"
            if ratios else "no measurement")


def measure_strategies(ctx, model_dir: Path, lengths: list[int], device: str,
                       gen_lengths: list[int]) -> dict[tuple[str, int], dict]:
    results = {}
    cells = [(s, n) for n in lengths for s in STRATEGIES] + [(GENERATE, n) for n in gen_lengths]
    for strategy, length in cells:
        r = results[(strategy, length)] = in_child(ctx, model_dir, strategy, length, device)
        print(f"  measured {model_dir.name} {strategy} L={length}: " + (r.get("error") or
              f"{r['plan']}, +{(r['peak_kb'] - r['load_kb']) / 2**20:.2f} GiB, {r['seconds']:.1f}s"),
              file=sys.stderr, flush=True)
    return results


def strategy_report(name: str, results: dict, lengths: list[int]) -> tuple[str, str]:
    """(per-cell table, side-by-side at the top L)."""
    spec = STRATEGY_MODELS[name]
    cuda = any("cuda_peak" in r for r in results.values())
    rows = []
    for (strategy, length), r in results.items():  # by L, then the generation rows
        if strategy == GENERATE:
            strategy = f"stream, generate({NEW_TOKENS})"
        if "error" in r:
            rows.append([length, strategy, r.get("plan", ""), "", f"failed: {r['error']}", "", ""]
                        + ([""] if cuda else []))
            continue
        measured = (r["peak_kb"] - r["load_kb"]) * 1024
        ratio = measured / r["estimate"]
        row = [length, strategy, r["plan"], f"{r['estimate'] / 2**30:.3f}", f"{measured / 2**30:.3f}",
               f"{ratio:.2f}", f"{r['seconds']:.1f}"]
        if cuda:
            row.append(f"{r['cuda_peak'] / 2**30:.3f} ({r['cuda_peak'] / r['estimate']:.2f})"
                       if "cuda_peak" in r else "")
        rows.append(row)
    columns = ["L", "strategy", "plan", "estimate GiB (weights excluded)", "measured RSS increment GiB",
               "measured / estimate", "seconds"] + (["CUDA max allocated GiB (/ estimate)"] if cuda else [])
    cells = bc.table(columns, rows)
    top = side_by_side_length(lengths)
    at = {s: results[(s, top)] for s in STRATEGIES}
    if any("error" in r for r in at.values()):
        return cells, f"(side by side at L={top} unavailable: a measurement failed)"
    inc = {s: (r["peak_kb"] - r["load_kb"]) * 1024 for s, r in at.items()}
    nll = {s: r["nll"] for s, r in at.items()}
    side = [["measured RSS increment GiB"] + [f"{inc[s] / 2**30:.3f}" for s in STRATEGIES]
            + [f"{inc['stream'] / inc['single']:.2f}", f"{inc['stream'] / inc['prefill']:.2f}"],
            ["planner estimate GiB"] + [f"{at[s]['estimate'] / 2**30:.3f}" for s in STRATEGIES]
            + [f"{at['stream']['estimate'] / at['single']['estimate']:.2f}",
               f"{at['stream']['estimate'] / at['prefill']['estimate']:.2f}"]]
    if cuda and all("cuda_peak" in r for r in at.values()):
        side.append(["CUDA max allocated GiB"] + [f"{at[s]['cuda_peak'] / 2**30:.3f}" for s in STRATEGIES]
                    + [f"{at['stream']['cuda_peak'] / at['single']['cuda_peak']:.2f}",
                       f"{at['stream']['cuda_peak'] / at['prefill']['cuda_peak']:.2f}"])
    agree = max(abs(nll[s] / nll["single"] - 1) for s in STRATEGIES)
    text = (f"Side by side at L={top} ({name}: {spec['num_hidden_layers']} layers, "
            f"hidden {spec['hidden_size']}, {spec['num_attention_heads']} heads / "
            f"{spec['num_key_value_heads']} kv heads); mean NLL of the three agrees to {agree:.1e} "
            "(relative)\n\n"
            + bc.table(["", *(f"{s} ({at[s]['plan']})" for s in STRATEGIES), "stream / single",
                        "stream / prefill"], side))
    return cells, text


# other families and attention paths the planner models (2 layers, GQA 8 / 2 heads, vocab 4,096): sliding
# windows (a mask even in a single pass; Gemma2 builds one per kind of layer), eager scores, softcapping
FAMILY_SHAPE = dict(vocab_size=STRATEGY_VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                    num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=8192)
FAMILY_CELLS = [("mistral", "sdpa", s) for s in STRATEGIES] + [("gemma2", "eager", s) for s in STRATEGIES] + [
    ("llama", "eager", s) for s in ("single", "prefill")] + [
    ("gemma3", "sdpa", s) for s in (*STRATEGIES, GENERATE)]
FAMILY_LENGTH, FAMILY_CHUNK = 4096, 1024


def build_family(path: Path, kind: str) -> Path:
    import torch
    import transformers

    from harness.model.bytetok import byte_tokenizer

    if kind == "mistral":
        config = transformers.MistralConfig(**FAMILY_SHAPE, sliding_window=512)
    elif kind == "gemma2":
        config = transformers.Gemma2Config(**FAMILY_SHAPE, head_dim=32, sliding_window=512,
                                           attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                           layer_types=["sliding_attention", "full_attention"])
    elif kind == "gemma3":  # Gemma 3 270M's pattern: five local layers (window 512, base 1e4), one global
        shape = {**FAMILY_SHAPE, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1}
        config = transformers.Gemma3TextConfig(**shape, head_dim=64, sliding_window=512,
                                               query_pre_attn_scalar=64,
                                               layer_types=["sliding_attention"] * 5 + ["full_attention"])
    else:
        config = transformers.LlamaConfig(**FAMILY_SHAPE)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def families_main(ctx, device: str, tmp: Path) -> None:
    print(f"### Other families and attention paths (L={FAMILY_LENGTH}, chunks of {FAMILY_CHUNK}; 2 layers, "
          "hidden 256, 8 heads / 2 kv heads; Mistral: sliding window 512; Gemma2: sliding window 512 and "
          "full layers, attention and final logit softcapping; Gemma3: 6 layers, 4 heads / 1 kv head, five "
          f"local (window 512) and one global; `{GENERATE}`: the prompt's cache kept for {NEW_TOKENS} greedy "
          "tokens)\n")
    from harness.engine import planner

    rows, ratios, generation = [], [], []
    for kind, attn, strategy in FAMILY_CELLS:
        model_dir = tmp / kind
        if not model_dir.exists():
            build_family(model_dir, kind)
        r = in_child(ctx, model_dir, strategy, FAMILY_LENGTH, device, attn, FAMILY_CHUNK)
        if "error" in r:
            rows.append([kind, attn, strategy, r.get("plan", ""), "", f"failed: {r['error']}", ""])
            continue
        measured = (r["peak_kb"] - r["load_kb"]) * 1024
        ratio = measured / r["estimate"]
        if strategy == GENERATE:  # reported, not targeted: see the note printed below the table
            generation.append(ratio <= 1)
        else:
            ratios.append((ratio, f"{kind} {attn} {strategy}"))
        rows.append([kind, attn, strategy, r["plan"], f"{r['estimate'] / 2**30:.3f}",
                     f"{measured / 2**30:.3f}", f"{ratio:.2f}"])
    print(bc.table(["family", "attention", "strategy", "plan", "estimate GiB (weights excluded)",
                    "measured RSS increment GiB", "measured / estimate"], rows) + "\n")
    ok = within_2x(ratios, len(FAMILY_CELLS) - len(generation))
    print(f"Target planner estimate conservative and within 2x on the other families and attention paths: "
          f"measured / estimate {worst(ratios)} -> {bc.verdict(ok)}")
    print(f"Generation rows: estimate conservative -> {bc.verdict(all(generation))} (not held to 2x: a "
          f"generation plan prices the output head for a teacher-forced answer of up to {planner.HEAD_CHUNK} "
          "tokens, since it does not know the answer's length; here that is most of the estimate)")


def strategies_main(lengths: list[int], device: str, tmp: Path, gen_lengths: list[int]) -> None:
    ctx = forkserver()
    described = "; ".join(f"{n}: {s['num_hidden_layers']} layers, hidden {s['hidden_size']}, intermediate "
                          f"{s['intermediate_size']}, {s['num_attention_heads']} heads / "
                          f"{s['num_key_value_heads']} kv heads" for n, s in STRATEGY_MODELS.items())
    print(bc.header("Memory by strategy: planner estimate vs measured peak",
                    f"float32, sdpa attention, {device}",
                    model=f"random Llamas, vocab {STRATEGY_VOCAB} ({described})"))
    print(f"- Engine(strategy=...): single = one pass; stream = layer-streamed, query chunks of "
          f"{STRATEGY_CHUNK}; prefill = KV-cache prefill in chunks of {STRATEGY_CHUNK}; head + loss in "
          "1,024-token sub-chunks for all")
    print("- estimate = the plan's estimate_bytes minus the weights; measured = peak RSS (VmHWM) after the "
          "pass minus RSS once the engine is built (model loaded, self-check run; VmHWM reset there), glibc "
          "unmapping freed tensors as a CPU run under --max-memory does (memory_guard.return_freed_tensors), "
          "so RSS follows the live tensors as CUDA's max_memory_allocated does; one run per cell\n")
    ratios: dict[str, list[tuple[float, str]]] = {s: [] for s in (*STRATEGIES, GENERATE)}
    versus: dict[str, list[tuple[str, float]]] = {"prefill": [], "single": []}
    growth: list[tuple[float, str]] = []  # stream pass increment per doubling of L
    top = side_by_side_length(lengths)
    for name, spec in STRATEGY_MODELS.items():
        model_dir = bc.build_model(tmp / name, spec=spec)
        results = measure_strategies(ctx, model_dir, lengths, device, gen_lengths)
        cells, side = strategy_report(name, results, lengths)
        print(f"### {name}\n\n{cells}\n\n{side}\n")
        inc = {k: (r["peak_kb"] - r["load_kb"]) * 1024 for k, r in results.items() if "error" not in r}
        for (strategy, length), measured in inc.items():
            ratios[strategy].append((measured / results[(strategy, length)]["estimate"],
                                     f"{strategy} {name} L={length}"))
        for other in versus:
            if ("stream", top) in inc and (other, top) in inc:
                versus[other].append((name, inc[("stream", top)] / inc[(other, top)]))
        streamed = sorted(n for s, n in inc if s == "stream")
        growth += [((inc[("stream", b)] / inc[("stream", a)]) ** (1 / math.log2(b / a)), f"{name} L={b}")
                   for a, b in zip(streamed[:-1], streamed[1:], strict=True)]
    every = [x for s in STRATEGIES for x in ratios[s]]

    worst_stream = max(ratios["stream"], default=(float("nan"), ""))[0]
    print(f"Target stream estimate >= measured peak (measured / estimate <= 1) in every stream cell: highest "
          f"{worst_stream:.2f} -> {bc.verdict(worst_stream <= 1)}")
    cells = len(STRATEGY_MODELS) * len(lengths)
    print("Target planner estimate conservative (measured <= estimate) and within 2x (measured >= estimate "
          f"/ 2) for every strategy at every L: measured / estimate {worst(every)} -> "
          f"{bc.verdict(within_2x(every, len(STRATEGIES) * cells))}")
    gen = ratios[GENERATE]
    print(f"Target generation estimate (stream prompt + the KV cache kept for decoding) conservative and "
          f"within 2x at L={','.join(map(str, gen_lengths))}: measured / estimate {worst(gen)} -> "
          f"{bc.verdict(within_2x(gen, len(STRATEGY_MODELS) * len(gen_lengths)))}")
    for other, limit, text in (("prefill", 0.25, "1/4"), ("single", 0.5, "1/2")):
        ok = len(versus[other]) == len(STRATEGY_MODELS) and all(v <= limit for _, v in versus[other])
        print(f"Target stream peak <= {text} of {other}'s at L={top}: "
              + ", ".join(f"{n} {v:.2f}" for n, v in versus[other])
              + f" -> {bc.verdict(ok)}")
    linear = len(growth) == len(STRATEGY_MODELS) * (len(lengths) - 1) and all(g <= 2.3 for g, _ in growth)
    print("Target stream memory at most linear in L (pass increment <= x2 per doubling, +15% noise): "
          + ", ".join(f"x{g:.2f} ({w})" for g, w in growth) + f" -> {bc.verdict(linear)}\n")
    families_main(ctx, device, tmp)


def forkserver():
    """Children forked from a server that imported torch and transformers once."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "transformers.models.llama.modeling_llama",
                                "harness.engine.engine", "harness.model.models", "harness.engine.stream"])
    return ctx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2048,4096,8192,16384")
    parser.add_argument("--strategy-lengths", default="2048,4096,8192,16384,32768,65536",
                        help="lengths of the strategy table (single / stream / prefill)")
    parser.add_argument("--generation-lengths", default="4096,16384",
                        help="prompt lengths of the strategy table's generation rows (stream + generate)")
    parser.add_argument("--part", choices=("all", "methods", "strategies", "families"), default="all",
                        help="methods: harness vs labels= vs lm-eval; strategies: the engine's strategies "
                             "(and the families table); families: that table alone")
    parser.add_argument("--device", default=None,
                        help="device of the strategy table (default: cuda if available)")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a benchmark model folder")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "L", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, length, model_dir = args.child
        print(json.dumps(child(method, int(length), model_dir)), flush=True)
        return 0

    if args.part in ("all", "methods"):
        methods_main([int(x) for x in args.lengths.split(",")], args.model_dir)
    if args.part in ("all", "strategies", "families"):
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        with tempfile.TemporaryDirectory() as tmp:
            if args.part == "families":
                families_main(forkserver(), device, Path(tmp))
            else:
                strategies_main([int(x) for x in args.strategy_lengths.split(",")], device, Path(tmp),
                                [int(x) for x in args.generation_lengths.split(",") if x])
        print(f"\nload average at end: {bc.load_now()}")
    return 0


def methods_main(lengths: list[int], model_dir_arg: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bc.build_model(model_dir_arg or Path(tmp) / "model")
        print(bc.header("Memory: peak RSS of scoring L tokens (one child process per measurement)"))
        for method, what in METHODS.items():
            print(f"- {method}: {what}")
        print("- peak RSS = VmHWM of the child's /proc/self/status; 'after load' = VmHWM once the model is "
              "loaded, before the pass; one run per cell (allocator behaviour moves peaks between runs by up "
              "to ~0.2 GiB)\n")
        results = {}
        for length in lengths:
            for method in METHODS:
                results[(method, length)] = measure(method, length, model_dir)
                r = results[(method, length)]
                print(f"  measured {method} L={length}: " + (r.get("error") or
                      f"peak {gib(r['peak_kb'])} GiB, ppl {r['ppl']:.1f}, {r['seconds']:.1f}s"),
                  file=sys.stderr)
        print(report(results, lengths))
        top = max(lengths)
        h, lab = results[("harness", top)], results[("labels", top)]
        if "peak_kb" in h and "peak_kb" in lab:
            ratio = h["peak_kb"] / lab["peak_kb"]
            print(f"\nTarget harness <= 1/4 of labels= at L={top}: {ratio:.3f} ({1 / ratio:.1f}x less) -> "
                  f"{bc.verdict(ratio <= 0.25)}")
            incs = [results[("harness", n)]["peak_kb"] - results[("harness", n)]["load_kb"] for n in lengths]
            growth = [b / a for a, b in zip(incs[:-1], incs[1:], strict=True) if a > 0]
            linear = all(g <= 2.3 for g in growth)
            print(f"Target memory at most linear in L (harness pass increment <= x2 per doubling, +15% "
                  f"noise): {', '.join(f'x{g:.2f}' for g in growth)} -> {bc.verdict(linear)}")
        print(f"\nload average at end: {bc.load_now()}")


if __name__ == "__main__":
    sys.exit(main())
