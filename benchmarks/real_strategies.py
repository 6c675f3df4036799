"""A real checkpoint's strategies against transformers' own load: exactness and memory (CPU, float32).

For a packaged GGUF model (default gemma3-270m: 15 local layers with a 512-token window, 3 global), at
lengths past the window: each strategy's mean NLL of random ids (single pass, layer-streamed and chunked
prefill, chunks of 1,024) against one plain forward of transformers' own GGUF load
(`from_pretrained(gguf_file=...)`, full logits), and each strategy's planner estimate against its measured
peak (a fresh child per cell, as benchmarks/memory.py measures); plus the generation row (the prompt
streamed into the cache, 4 greedy tokens).

    python benchmarks/real_strategies.py [--model gemma3-270m] [--lengths 2048,4096]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bench_common as bc
import memory

CHUNK = 1024
TARGET = 1e-5  # relative difference of the mean NLL, float32


def reference_child(gguf: str, lengths: list[int], queue) -> None:
    """Mean NLL per length from one plain forward each of transformers' own GGUF load."""
    try:
        import torch
        import torch.nn.functional as F
        from transformers import AutoModelForCausalLM

        path = Path(gguf)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32, attn_implementation="sdpa").eval()
        out = {}
        for length in lengths:
            ids = torch.tensor([bc.random_ids(length, vocab=memory.STRATEGY_VOCAB)])
            with torch.no_grad():
                logits = model(ids).logits[0, :-1]  # [L - 1, vocab]: the plain forward
                out[length] = float(F.cross_entropy(logits, ids[0, 1:], reduction="none").double().mean())
            del logits
        queue.put(out)
    except Exception as exc:  # reported in the table
        queue.put({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m", help="a packaged GGUF model (default gemma3-270m)")
    parser.add_argument("--lengths", default="2048,4096")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]

    from harness.model import gguf, models

    file = models.resolve_model_path(args.model)
    folder = gguf.materialised(file)  # what the harness loads: the dequantised float32 folder
    ctx = memory.forkserver()
    queue = ctx.Queue()
    proc = ctx.Process(target=reference_child, args=(file, lengths, queue))
    proc.start()
    reference = queue.get()
    proc.join()
    print(bc.header(f"{args.model}: strategies vs transformers' own GGUF load, estimate vs measured peak",
                    model=f"{args.model} ({Path(file).name}, dequantised to float32)"))
    rows, worst, ratios = [], 0.0, []
    for length in lengths:
        for strategy in (*memory.STRATEGIES, memory.GENERATE):
            r = memory.in_child(ctx, folder, strategy, length, "cpu", "sdpa", CHUNK)
            if "error" in r or "error" in reference:
                rows.append([length, strategy, r.get("plan", ""), r.get("error") or reference["error"],
                             "", "", "", "", ""])
                continue
            measured = (r["peak_kb"] - r["load_kb"]) * 1024
            ratios.append(measured / r["estimate"])
            rel = ""
            if strategy != memory.GENERATE:
                rel_value = abs(r["nll"] / reference[length] - 1)
                worst, rel = max(worst, rel_value), f"{rel_value:.1e}"
            rows.append([length, strategy, r["plan"], f"{r.get('nll', float('nan')):.6f}",
                         f"{reference[length]:.6f}", rel, f"{r['estimate'] / 2**30:.2f}",
                         f"{measured / 2**30:.2f}", f"{ratios[-1]:.2f}"])
    print(bc.table(["L", "strategy", "plan", "mean NLL harness", "mean NLL plain forward", "relative gap",
                    "estimate GiB (weights excluded)", "measured RSS increment GiB", "measured / estimate"],
                   rows))
    ok = worst <= TARGET and all(0 < r <= 1 for r in ratios) and len(ratios) == 4 * len(lengths)
    print(f"\nTarget every strategy within {TARGET:g} of the plain forward, every estimate conservative: "
          f"worst gap {worst:.1e}, measured / estimate {min(ratios, default=0):.2f}.."
          f"{max(ratios, default=0):.2f} -> {bc.verdict(ok)}")
    print(f"load average at end: {bc.load_now()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
