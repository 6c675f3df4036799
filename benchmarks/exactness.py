"""Exactness: ppl@L from the harness engine vs a plain full forward of exactly L tokens (float32).

Reference: a freshly loaded transformers model (plain `from_pretrained`, not the harness loader), one
forward of the L tokens, full [L, vocab] logits, cross-entropy per token, exp(mean). Harness: as the
perplexity task does it: default RoPE scores the longest length once and reads every shorter L off its
prefix (causal); dynamic NTK (length-dependent) gets one pass per L with frequencies fixed for L. Both
as a single pass and as chunked prefill through the KV cache (chunk 1,000: not dividing any L).

    python benchmarks/exactness.py [--lengths 1024,4096,16384]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bench_common as bc

TARGET = 1e-5
CHUNK = 1000
SETTINGS = {  # name -> rope_parameters override (None = the checkpoint's default RoPE, theta 1e4)
    "default": None,
    "dynamic f=4": {"rope_type": "dynamic", "factor": 4.0},
}


def reference_nll(model_dir: Path, rope: dict | None, ids: list[int]):
    """Per-token NLL of a plain forward on a freshly loaded model (dynamic NTK is stateful: fresh per L)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    if rope:
        config.rope_parameters = {**config.rope_parameters, **rope}
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
        nll = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    del logits, model
    return nll


def harness_nll(model_dir: Path, rope: dict | None, ids: list[int], lengths: list[int], chunk: int | None):
    """{L: per-token NLL} the way the perplexity task gets it."""
    from harness.engine import engine
    from harness.model import models, rope_config

    override = (rope_config.RopeOverride(rope_type=rope["rope_type"], factor=rope["factor"]) if rope
                else rope_config.RopeOverride())
    eng = engine.Engine(models.load(str(model_dir), override, dtype="float32", device="cpu", attn="sdpa"),
                        chunk_size=chunk)
    if eng.length_dependent:
        return {n: eng.token_nll(ids[:n]) for n in lengths}, "one pass per L"
    longest = eng.token_nll(ids[:max(lengths)])
    return {n: longest[:n - 1] for n in lengths}, f"one pass at {max(lengths)}"


def main() -> int:
    import math

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a benchmark model folder")
    args = parser.parse_args()
    lengths = sorted(int(x) for x in args.lengths.split(","))
    ids = bc.random_ids(max(lengths))

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bc.build_model(args.model_dir or Path(tmp) / "model")
        print(bc.header("Exactness: harness ppl@L vs a plain full forward (float32)"))
        print(f"- reference: fresh `from_pretrained` model per (setting, L), one forward, full logits; "
              f"harness chunked prefill: chunk {CHUNK}; deterministic, so one run (no repeats)\n")
        rows, worst, all_refs = [], 0.0, {}
        for name, rope in SETTINGS.items():
            start = time.perf_counter()
            refs = all_refs[name] = {n: reference_nll(model_dir, rope, ids[:n]) for n in lengths}
            for mode, chunk in (("single pass", None), (f"prefill:{CHUNK}", CHUNK)):
                got, how = harness_nll(model_dir, rope, ids, lengths, chunk)
                for n in lengths:
                    ref_ppl = math.exp(float(refs[n].double().mean()))
                    ppl = math.exp(float(got[n].double().mean()))
                    rel = abs(ppl / ref_ppl - 1)
                    token = float((got[n] - refs[n]).abs().max())
                    worst = max(worst, rel)
                    rows.append([name, mode, how, n, f"{ref_ppl:.4f}", f"{ppl:.4f}", f"{rel:.1e}",
                                 f"{token:.1e}", bc.verdict(rel <= TARGET)])
            print(f"  {name}: {time.perf_counter() - start:.0f}s", file=sys.stderr)
        top = max(lengths)
        sensitivity = float((all_refs["default"][top] - all_refs["dynamic f=4"][top]).abs().max())
        print(bc.table(["RoPE", "harness mode", "harness passes", "L", "ppl plain forward", "ppl harness",
                        "relative difference", "max per-token NLL difference", f"target <= {TARGET:g}"],
                       rows))
        print(f"\nTarget ppl@L relative difference <= {TARGET:g} (float32), worst row: {worst:.1e} -> "
              f"{bc.verdict(worst <= TARGET)}")
        print(f"(For scale: default and dynamic RoPE differ per token by up to {sensitivity:.2f} nats "
              f"at L={top} "
              f"in the plain forward, so these checks see the RoPE setting.)")
        print(f"\nload average at end: {bc.load_now()}")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
