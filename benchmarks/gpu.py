"""GPU: tokens/s and model-FLOPs utilisation (MFU) of the harness engine at 8K / 32K tokens with
flash_attention_2 vs sdpa, and the longest L that fits for a given model. Only where CUDA is present.

    python benchmarks/gpu.py [--model PATH_OR_ID] [--lengths 8192,32768] [--dtype bfloat16]
                             [--repeats 3] [--peak-tflops T] [--fit-start 8192] [--fit-limit 1048576]

Without --model it builds the benchmark's tiny Llama (32K vocabulary): tokens/s are then real but MFU is
tiny by construction; pass a real checkpoint for meaningful MFU. Model FLOPs of one scoring pass of L
tokens (forward only, causal attention): 2 * N * L + 2 * layers * L^2 * (heads * head_dim), N = the
non-embedding parameters plus the output head (PaLM appendix B convention, forward = 1/3 of training).
MFU = model FLOPs / seconds / the device's dense peak (--peak-tflops, else a small table of known cards).
The longest L that fits is searched the way a user would run the harness with --max-memory set to the
card's memory: L doubles from --fit-start until a pass fails (CUDA out-of-memory, or the planner says it
cannot fit), then a few bisection steps narrow it down.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_common as bc

PEAK_TFLOPS = {  # dense bf16/fp16 tensor-core peak, TFLOP/s (vendor datasheets)
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100": 756.0,
    "A100": 312.0, "L40S": 362.1, "A10G": 70.0, "L4": 121.0,
}


def peak_tflops(name: str, dtype: str, given: float | None) -> float | None:
    if given:
        return given
    if dtype == "float32":
        return None  # MFU against a tensor-core peak is meaningless in fp32
    for key, value in PEAK_TFLOPS.items():  # most specific first
        if key in name:
            return value
    return None


def model_flops(model, config, length: int) -> float:
    from harness import rope_config

    text = rope_config.text_config(config)
    params = {id(p): p.numel() for p in model.parameters()}
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    n = sum(params.values()) - embed.numel() + (embed.numel() if head is embed else 0)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2.0 * n * length + 2.0 * text.num_hidden_layers * length**2 * heads * head_dim


def load(model: str, dtype: str, attn: str):
    from harness import models, rope_config

    return models.load(model, rope_config.RopeOverride(), dtype=dtype, device="cuda", attn=attn)


def free() -> None:
    """Return cached blocks to the card (callers drop their references first)."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def time_pass(eng, ids: list[int], repeats: int) -> tuple[float, float]:
    """Median seconds of Engine.token_nll(ids) after one warm-up, and peak GPU memory (GiB)."""
    import torch

    torch.cuda.reset_peak_memory_stats()
    eng.token_nll(ids)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        eng.token_nll(ids)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def throughput(args, model: str, peak: float | None) -> list[list[object]]:
    import torch

    from harness import engine

    rows = []
    for attn in ("flash_attention_2", "sdpa"):
        if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            rows.append([attn, "", "unavailable: flash-attn not installed (optional GPU install step)",
                         "", "", "", ""])
            continue
        try:
            loaded = load(model, args.dtype, attn)
        except Exception as exc:
            rows.append([attn, "", f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}",
                         "", "", "", ""])
            continue
        eng = engine.Engine(loaded)
        for length in args.lengths:
            ids = [i % loaded.config.vocab_size for i in bc.random_ids(length)]
            oom = False
            try:
                seconds, mem = time_pass(eng, ids, args.repeats)
            except torch.cuda.OutOfMemoryError:
                oom = True
            if oom:  # outside the except block: the failed pass's tensors are released by now
                free()
                rows.append([attn, length, "out of memory (single pass)", "", "", "", ""])
                continue
            flops = model_flops(loaded.model, loaded.config, length)
            mfu = f"{100 * flops / seconds / (peak * 1e12):.1f}%" if peak else "n/a"
            rows.append([attn, length, f"{seconds:.3f}", f"{length / seconds:,.0f}",
                         f"{flops / seconds / 1e12:.1f}", mfu, f"{mem:.1f}"])
        del eng, loaded
        free()
    return rows


def longest_fit(args, model: str) -> tuple[str, int | None, int | None, list[list[object]]]:
    """Doubling then bisection; returns (attn, longest L that ran, shortest L that failed, tried rows)."""
    import torch

    from harness import engine

    attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"
    loaded = load(model, args.dtype, attn)
    budget = torch.cuda.get_device_properties(0).total_memory
    eng = engine.Engine(loaded, max_memory=budget)
    vocab = loaded.config.vocab_size
    tried: list[list[object]] = []

    def fits(length: int) -> bool:
        plan = eng.plan(length)
        if not plan.fits:
            tried.append([length, str(plan), "no: the planner's estimate exceeds the card", ""])
            return False
        ids = [i % vocab for i in bc.random_ids(length)]
        start = time.perf_counter()
        ok = True
        try:
            eng.token_nll(ids, plan)
            torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            ok = False
        free()  # outside the except block: the failed pass's tensors are released by now
        tried.append([length, str(plan), "yes" if ok else "no: CUDA out of memory",
                      f"{time.perf_counter() - start:.1f}"])
        return ok

    good, bad, length = None, None, args.fit_start
    while length <= args.fit_limit:
        if fits(length):
            good, length = length, length * 2
        else:
            bad = length
            break
    if good is not None and bad is not None:
        for _ in range(args.bisect_steps):
            mid = (good + bad) // 2 // 1024 * 1024
            if mid in (good, bad):
                break
            if fits(mid):
                good = mid
            else:
                bad = mid
    eng = loaded = None  # drop the model before freeing (the closure above shares these names)
    free()
    return attn, good, bad, tried


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="checkpoint path or hub id (default: the tiny benchmark Llama)")
    parser.add_argument("--lengths", default="8192,32768")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense peak for MFU")
    parser.add_argument("--fit-start", type=int, default=8192)
    parser.add_argument("--fit-limit", type=int, default=1 << 20, help="stop the doubling search here")
    parser.add_argument("--bisect-steps", type=int, default=3)
    parser.add_argument("--no-fit", action="store_true", help="skip the longest-L search")
    args = parser.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]

    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA")
        return 0
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name, args.dtype, args.peak_tflops)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(bc.build_model(Path(tmp) / "model"))
        print(bc.header("GPU: throughput and MFU, flash_attention_2 vs sdpa", where=f"{args.dtype}, CUDA"))
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        print(f"- GPU: {name}, {memory:.0f} GiB, CUDA {torch.version.cuda}; dense peak used for MFU: "
              f"{f'{peak:g} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}")
        print(f"- model: {args.model or 'the tiny benchmark Llama above (MFU tiny by construction)'}"
              f", {args.dtype}; "
              f"harness Engine.token_nll, single pass; {args.repeats} repeats after one warm-up, median; "
              f"flash-attn {'installed' if importlib.util.find_spec('flash_attn') else 'not installed'}\n")
        rows = throughput(args, model, peak)
        print(bc.table(["attention", "L", "seconds", "tokens/s", "model TFLOP/s", "MFU", "peak GPU GiB"],
                       rows))
        if not args.no_fit:
            attn, good, bad, tried = longest_fit(args, model)
            print(f"\n### Longest L that fits ({attn}, --max-memory = the card's {memory:.0f} GiB)\n")
            print(bc.table(["L", "plan", "fits", "seconds"], tried))
            if bad is None:
                note = f" (every L up to --fit-limit {args.fit_limit} ran: the limit is higher)"
            else:
                note = f"; {bad} did not"
            print(f"\nLongest L that ran: {good if good else 'none'}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
