"""Decoding speed: greedy steps writing into a preallocated cache vs a cache grown by concatenation (CPU).

What a generation cell spends after its prefill: RULER's needle tasks ask for up to 128 tokens, and a base
model rarely stops early. One prefill per length; each method decodes from its own copy of that cache,
under the allocator rule every CPU run uses (`memory_guard.return_freed_tensors`: allocations of 64 KiB
or more get their own pages). Methods alternate within each repeat; the ratio is the median of per-repeat
ratios. The greedy tokens of both methods must be equal.

- grown: `decode._greedy`, each step concatenates its K/V onto the cache (DynamicCache's update);
- preallocated: `decode.greedy`, the cache moved into buffers with room for the steps, written in place.

Target: preallocated at least 1.5x faster per token at 8K.

    python benchmarks/decode.py [--model smollm2] [--lengths 4096,8192,16384] [--steps 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import sys

import bench_common as bc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="a model id the harness loads (default smollm2)")
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--steps", type=int, default=32, help="greedy tokens per decode")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from harness.engine import engine, memory_guard
    from harness.model import models

    memory_guard.return_freed_tensors()
    eng = engine.Engine(models.load(args.model))
    model, kw = eng.model, eng.cache_kw
    print(bc.header("Decoding: preallocated cache vs grown cache", model=args.model))
    rows, ok = [], True
    for length in (int(x) for x in args.lengths.split(",")):
        times, same = _timed(model, kw, length, args.steps, args.repeats)
        ratio = bc.paired_ratio(times["grown"], times["preallocated"])
        ok = ok and same and (length != 8192 or ratio >= 1.5)
        per_token = {name: bc.median(t) / args.steps for name, t in times.items()}
        rows.append([length, f"{per_token['grown'] * 1e3:.0f}", f"{per_token['preallocated'] * 1e3:.0f}",
                     f"{ratio:.2f}x", "yes" if same else "NO"])
    print(bc.table(["L", "grown ms/token", "preallocated ms/token", "speed-up", "same tokens"], rows))
    print(f"\ntarget (preallocated >= 1.5x at 8K, same tokens): {bc.verdict(ok)}")
    print(f"load at end: {bc.load_now()}")
    return 0 if ok else 1


def _timed(model, kw: str, length: int, steps: int, repeats: int) -> tuple[dict[str, list[float]], bool]:
    """(seconds per repeat of each method, whether their greedy tokens agree) after one prefill of L ids."""
    import torch

    from harness.engine import decode

    ids = torch.tensor([bc.random_ids(length, vocab=model.config.vocab_size)])
    with torch.inference_mode():
        prefilled = decode.new_cache(model)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw: prefilled})
    tokens: dict[str, list[int]] = {}

    def run(name: str, greedy):
        def once():
            with torch.inference_mode():
                tokens[name] = greedy(model, kw, copy.deepcopy(prefilled), out, steps, ())[0]
        return once

    times = bc.timings({"grown": run("grown", decode._greedy),
                        "preallocated": run("preallocated", decode.greedy)}, repeats)
    return times, tokens["grown"] == tokens["preallocated"]


if __name__ == "__main__":
    sys.exit(main())
