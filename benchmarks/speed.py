"""Speed: the whole length grid via the harness vs plain passes, and throughput at each L (CPU).

Measured in one process on one model object; within each repeat the harness and the plain pass run
back to back in alternating order, so that load from other processes hits both alike. Times are medians
over repeats; ratios are the median of the per-repeat ratios (robust to load that drifts between
repeats).
- harness grid: what the perplexity task does for --lengths 1K..16K on a sample: one Engine.token_nll
  pass at 16K, then ppl@L of every L off its prefix;
- plain pass at L: `model(ids[:L], labels=ids[:L])` under torch.no_grad() (what users write);
- separate passes per length (YaRN-style scripts): one plain pass per L of the grid, i.e. the sum of
  the plain-pass medians at each L;
- throughput at L: the harness's Engine.token_nll(ids[:L]) vs the plain pass at L;
- stream vs single at L (--pair-lengths, where both fit): Engine(strategy="stream").token_nll vs
  Engine(strategy="single").token_nll on the same ids, paired in each repeat;
- passkey cell at L (--pair-lengths): `score_and_generate(prompt, answer, max_new_tokens=9)` (one prefill)
  vs ONE `token_nll` pass over the same prompt, with the old two-prefill path (`answer_score` then
  `generate`) timed alongside for comparison;
- prefix reuse at L (--prefix-lengths): a passkey grid of 3 depths x 3 keys, each prompt random filler
  with a 7-token "key" at the depth, scored with `score_and_generate` in the runner's order (length ->
  depth -> key) by Engine(prefix_reuse=True) vs Engine(prefix_reuse=False), paired in each repeat; the
  answers must agree (same greedy tokens, log-probs to 1e-4);
- batching at L (--batch-lengths): Engine(batch_size=B).token_nll_batch over B same-length sequences (one
  forward) vs Engine(batch_size=1) over the same B (B forwards), paired in each repeat; the numbers must be
  bit-identical. On CPU one row already keeps the cores busy, so this is measured, not targeted: batching
  is meant for GPUs at short L (`--batch-size auto` batches only on an accelerator).

Exit status 1 when any target line reads MISSED, else 0.

    python benchmarks/speed.py [--lengths 1024,2048,4096,8192,16384] [--repeats 5] [--long-repeats 3]
                               [--pair-lengths 2048,8192] [--prefix-lengths 4096]
                               [--batch-lengths 256,1024] [--batch 8]
                               [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import bench_common as bc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default=",".join(map(str, bc.GRID)))
    parser.add_argument("--repeats", type=int, default=5, help="repeats at L < 16384")
    parser.add_argument("--long-repeats", type=int, default=3, help="repeats at L >= 16384")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--pair-lengths", default="2048,8192",
                        help="lengths of the stream-vs-single and passkey rows")
    parser.add_argument("--prefix-lengths", default="4096", help="lengths of the prefix-reuse rows")
    parser.add_argument("--batch-lengths", default="256,1024", help="lengths of the batching rows")
    parser.add_argument("--batch", type=int, default=8, help="sequences per batch in the batching rows")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a benchmark model folder")
    args = parser.parse_args()
    lengths = sorted(int(x) for x in args.lengths.split(","))
    pair_lengths = sorted(int(x) for x in args.pair_lengths.split(",") if x)
    top = max(lengths)

    import torch

    from harness.engine import engine
    from harness.model import models, rope_config

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bc.build_model(args.model_dir or Path(tmp) / "model")
        print(bc.header("Speed: length grid and throughput, harness vs plain forward"))
        loaded = models.load(str(model_dir), rope_config.RopeOverride(), dtype="float32", device="cpu",
                             attn="sdpa")
        eng = engine.Engine(loaded)
        ids = bc.random_ids(top)

        def harness_at(n: int):
            def fn():
                nll = eng.token_nll(ids[:n])
                return [engine.perplexity(nll[:m - 1]) for m in lengths if m <= n]  # every ppl@L off one pass
            return fn

        def plain_at(n: int):
            tensor = torch.tensor([ids[:n]])

            def fn():
                with torch.no_grad():
                    return float(torch.exp(loaded.model(tensor, labels=tensor).loss))
            return fn

        # same numbers from both (sanity), then a warm-up of both at the shortest length
        same = abs(harness_at(lengths[0])()[-1] / plain_at(lengths[0])() - 1)
        medians, ratios, repeats = {}, {}, {}
        for n in lengths:
            repeats[n] = args.long_repeats if n >= 16384 else args.repeats
            got = bc.timings({"harness": harness_at(n), "plain": plain_at(n)}, repeats[n],
                             warmup=1 if n == lengths[0] else 0)
            medians[n] = {k: bc.median(v) for k, v in got.items()}
            ratios[n] = bc.paired_ratio(got["plain"], got["harness"])  # harness throughput / plain throughput
            print(f"  L={n}: harness {' '.join(f'{x:.2f}' for x in got['harness'])}s, plain "
                  f"{' '.join(f'{x:.2f}' for x in got['plain'])}s (load {bc.load_now()})", file=sys.stderr)

        print(f"- repeats: {args.repeats} at L < 16384, {args.long_repeats} at L >= 16384; "
              f"warm-up: one pass each at L={lengths[0]}; harness vs plain ppl agree to {same:.0e}\n")
        rows = []
        for n in lengths:
            h, p = medians[n]["harness"], medians[n]["plain"]
            rows.append([n, repeats[n], f"{h:.3f}", f"{p:.3f}", f"{n / h:,.0f}", f"{n / p:,.0f}",
                         f"{ratios[n]:.2f}", bc.verdict(ratios[n] >= 0.8)])
        print("### Throughput at L (harness token_nll vs plain `model(ids, labels=ids)`)\n")
        print(bc.table(["L", "repeats", "harness s", "plain s", "harness tok/s", "plain tok/s",
                        "harness / plain throughput (median of paired ratios)", "target >= 0.8"], rows))

        grid = medians[top]["harness"]
        plain_top = medians[top]["plain"]
        grid_ratio = 1 / ratios[top]  # median of per-repeat (grid / plain) ratios
        separate_plain = sum(medians[n]["plain"] for n in lengths)
        separate_harness = sum(medians[n]["harness"] for n in lengths)
        grid_name = ",".join(f"{n // 1024}K" for n in lengths)
        print(f"\n### Whole grid L = {grid_name}\n")
        print(bc.table(["method", "seconds (median)", "vs one plain pass at top L", "target"], [
            [f"harness: one pass at {top}, every ppl@L off its prefix", f"{grid:.2f}", f"{grid_ratio:.2f}x",
             f"<= 1.2x: {bc.verdict(grid_ratio <= 1.2)}"],
            [f"one plain pass at {top} (yields ppl@{top} only)", f"{plain_top:.2f}", "1.00x", ""],
            ["separate plain passes per L (YaRN-style scripts)", f"{separate_plain:.2f}",
             f"{separate_plain / plain_top:.2f}x", f"harness is {separate_plain / grid:.2f}x faster"],
            ["separate harness passes per L (for reference)", f"{separate_harness:.2f}",
             f"{separate_harness / plain_top:.2f}x", ""],
        ]))
        worst = min(lengths, key=lambda n: ratios[n])
        print(f"\nTarget whole grid via the harness <= 1.2x one plain pass at {top}: {grid_ratio:.2f}x -> "
              f"{bc.verdict(grid_ratio <= 1.2)}")
        print(f"Target harness >= 0.8x plain throughput at every L: "
              f"lowest {ratios[worst]:.2f} at L={worst} -> "
              f"{bc.verdict(ratios[worst] >= 0.8)}")
        held = [grid_ratio <= 1.2, ratios[worst] >= 0.8]
        if pair_lengths:
            held += pair_rows(args, loaded, eng, pair_lengths)
        prefix_lengths = sorted(int(x) for x in args.prefix_lengths.split(",") if x)
        if prefix_lengths:
            held.append(prefix_rows(args, loaded, prefix_lengths))
        batch_lengths = sorted(int(x) for x in args.batch_lengths.split(",") if x)
        if batch_lengths:
            held.append(batch_rows(args, loaded, batch_lengths))
        print(f"\nload average at end: {bc.load_now()}")
    return 0 if all(held) else 1


def pair_rows(args, loaded, eng, pair_lengths: list[int]) -> list[bool]:
    """Stream vs single throughput and the passkey cell at each of `pair_lengths`; prints the tables and
    target lines, returns whether each target held."""
    from harness.engine import engine

    single = engine.Engine(loaded, strategy="single")
    streamed = engine.Engine(loaded, strategy="stream")
    ids = bc.random_ids(max(pair_lengths), seed=2)
    answer = bc.random_ids(7, seed=3)  # a passkey-sized answer
    new_tokens = 9
    stream_rows, key_rows, stream_ratio, key_ratio = [], [], {}, {}
    for i, n in enumerate(pair_lengths):
        reps = args.long_repeats if n >= 16384 else args.repeats
        prompt = ids[:n]
        got = bc.timings({"stream": lambda p=prompt: streamed.token_nll(p),
                          "single": lambda p=prompt: single.token_nll(p)}, reps, warmup=1 if i == 0 else 0)
        stream_ratio[n] = bc.paired_ratio(got["single"], got["stream"])  # stream / single throughput
        s, p = bc.median(got["stream"]), bc.median(got["single"])
        stream_rows.append([n, reps, str(streamed.plan(n)), f"{s:.3f}", f"{p:.3f}", f"{n / s:,.0f}",
                            f"{n / p:,.0f}", f"{stream_ratio[n]:.2f}", bc.verdict(stream_ratio[n] >= 0.8)])
        print(f"  stream L={n}: stream {' '.join(f'{x:.2f}' for x in got['stream'])}s, single "
              f"{' '.join(f'{x:.2f}' for x in got['single'])}s (load {bc.load_now()})", file=sys.stderr)

        def two(p=prompt):
            eng.answer_score(p, answer)
            eng.generate(p, new_tokens)

        def fused(p=prompt):
            return eng.score_and_generate(p, answer, max_new_tokens=new_tokens)

        got = bc.timings({"fused": fused,
                          "nll": lambda p=prompt: eng.token_nll(p), "two": two}, reps,
                         warmup=1 if i == 0 else 0)
        key_ratio[n] = bc.paired_ratio(got["fused"], got["nll"])
        two_ratio = bc.paired_ratio(got["two"], got["nll"])
        f, t, o = bc.median(got["fused"]), bc.median(got["nll"]), bc.median(got["two"])
        key_rows.append([n, reps, f"{f:.3f}", f"{t:.3f}", f"{o:.3f}", f"{key_ratio[n]:.2f}x",
                         f"{two_ratio:.2f}x", bc.verdict(key_ratio[n] <= 1.15)])
        print(f"  passkey L={n}: fused {' '.join(f'{x:.2f}' for x in got['fused'])}s, token_nll "
              f"{' '.join(f'{x:.2f}' for x in got['nll'])}s, two-prefill "
              f"{' '.join(f'{x:.2f}' for x in got['two'])}s (load {bc.load_now()})", file=sys.stderr)

    print("\n### Stream vs single pass (token_nll, Engine(strategy=...), same ids, paired repeats)\n")
    print(bc.table(["L", "repeats", "stream plan", "stream s", "single s", "stream tok/s", "single tok/s",
                    "stream / single throughput (median of paired ratios)", "target >= 0.8"], stream_rows))
    print(f"\n### Passkey cell: score_and_generate(prompt, {len(answer)}-token answer, max_new_tokens="
          f"{new_tokens}) vs one token_nll pass over the prompt\n")
    print(bc.table(["prompt L", "repeats", "score_and_generate s", "token_nll s",
                    "answer_score + generate s (old two prefills)", "score_and_generate / token_nll",
                    "two prefills / token_nll", "target <= 1.15x"], key_rows))
    low = min(stream_ratio, key=stream_ratio.get)
    high = max(key_ratio, key=key_ratio.get)
    print(f"\nTarget stream >= 0.8x single-pass throughput at every paired L: lowest {stream_ratio[low]:.2f} "
          f"at L={low} -> {bc.verdict(stream_ratio[low] >= 0.8)}")
    print(f"Target passkey score_and_generate <= 1.15x one token_nll pass: highest {key_ratio[high]:.2f}x "
          f"at L={high} -> {bc.verdict(key_ratio[high] <= 1.15)}")
    return [stream_ratio[low] >= 0.8, key_ratio[high] <= 1.15]


def passkey_grid(n: int) -> list[list[int]]:
    """3 depths x 3 keys of n-token prompts: the same filler, a 7-token key at each depth (runner order)."""
    filler = bc.random_ids(n, seed=4)
    return [filler[:int(depth * n)] + bc.random_ids(7, seed=20 + key) + filler[int(depth * n) + 7:]
            for depth in (0.1, 0.5, 0.9) for key in range(3)]


def prefix_rows(args, loaded, lengths: list[int]) -> bool:
    """A passkey grid with and without prefix reuse at each L: prints the table and the target line."""
    from harness.engine import engine

    reuse, fresh = engine.Engine(loaded), engine.Engine(loaded, prefix_reuse=False)
    answer = bc.random_ids(7, seed=3)
    rows, held = [], True
    for i, n in enumerate(lengths):
        grid = passkey_grid(n)

        def run(eng, grid=grid):
            return [eng.score_and_generate_batch([p], [answer], 9) for p in grid]

        got = bc.timings({"reuse": lambda: run(reuse), "fresh": lambda: run(fresh)}, args.long_repeats,
                         warmup=1 if i == 0 else 0)
        a, b = run(reuse), run(fresh)
        same = all(x.values[0][1] == y.values[0][1]
                   and abs(x.values[0][0].logprob - y.values[0][0].logprob) <= 1e-4
                   for x, y in zip(a, b, strict=True))
        shared = sum(x.ran[0].prefix_reused for x in a) / (len(grid) * n)
        ratio = bc.paired_ratio(got["fresh"], got["reuse"])  # reuse / fresh throughput
        held &= same and ratio >= 1.1
        rows.append([n, len(grid), args.long_repeats, f"{shared:.0%}", f"{bc.median(got['reuse']):.2f}",
                     f"{bc.median(got['fresh']):.2f}", f"{ratio:.2f}x", "yes" if same else "NO"])
    print("\n### Prefix reuse: a passkey grid (3 depths x 3 keys, runner order), score_and_generate\n")
    print(bc.table(["L", "prompts", "repeats", "prompt tokens reused", "reuse s", "fresh s",
                    "speed-up (median of paired ratios)", "same answers"], rows))
    print(f"\nTarget prefix reuse >= 1.1x a fresh prefill per prompt, same answers -> {bc.verdict(held)}")
    return held


def batch_rows(args, loaded, lengths: list[int]) -> bool:
    """Batched vs row-by-row token_nll_batch at each L: prints the table and the equality target line."""
    import torch

    from harness.engine import engine

    one, many = engine.Engine(loaded), engine.Engine(loaded, batch_size=args.batch)
    rows, equal = [], True
    for i, n in enumerate(lengths):
        seqs = [bc.random_ids(n, seed=10 + k) for k in range(args.batch)]
        got = bc.timings({"batched": lambda s=seqs: many.token_nll_batch(s),
                          "rows": lambda s=seqs: one.token_nll_batch(s)}, args.repeats,
                         warmup=1 if i == 0 else 0)
        same = all(torch.equal(a, b) for a, b in zip(many.token_nll_batch(seqs), one.token_nll_batch(seqs),
                                                      strict=True))
        equal &= same
        ratio = bc.paired_ratio(got["rows"], got["batched"])  # batched / row-by-row throughput
        b, r = bc.median(got["batched"]), bc.median(got["rows"])
        rows.append([n, args.batch, args.repeats, f"{b:.3f}", f"{r:.3f}", f"{args.batch * n / b:,.0f}",
                     f"{args.batch * n / r:,.0f}", f"{ratio:.2f}", "yes" if same else "NO"])
    print(f"\n### Batching: {args.batch} same-length sequences in one forward vs one at a time "
          "(token_nll_batch)\n")
    print(bc.table(["L", "batch", "repeats", "batched s", "one at a time s", "batched tok/s",
                    "one at a time tok/s", "batched / one at a time throughput", "bit-identical"], rows))
    print(f"\nTarget batched token_nll bit-identical to batch 1 at every L (CPU): "
          f"{'all equal' if equal else 'differs'} -> {bc.verdict(equal)}")
    return equal


if __name__ == "__main__":
    sys.exit(main())
