"""Peak memory (RSS) of scoring L tokens: the harness engine vs `model(ids, labels=ids)` vs lm-evaluation-harness.

Every measurement runs in its own child process (a fresh interpreter: peaks do not leak between
measurements). The child reads its own peak RSS from /proc/self/status (VmHWM) once after loading the
model and once after the pass; the table shows both the total peak and the pass's increment over the
loaded model. Linear memory in L means the increment doubles (x2.0) when L doubles; quadratic, x4.

    python benchmarks/memory.py [--lengths 2048,4096,8192,16384]
"""

from __future__ import annotations

import argparse
import json
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


def vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(method: str, length: int, model_dir: str) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    result = {"method": method, "length": length}
    if method == "harness":
        from harness import engine, models, rope_config

        loaded = models.load(model_dir, rope_config.RopeOverride(), dtype="float32", device="cpu", attn="sdpa")
        eng = engine.Engine(loaded)
        ids = bc.random_ids(length)
        result["load_kb"] = vm_hwm_kb()
        result["plan"] = str(eng.plan(length))
        result["ppl"] = engine.perplexity(eng.token_nll(ids))
    elif method == "labels":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
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
            return {**result, "error": f"import lm_eval failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
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
            return {**result, "error": f"lm-eval failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2048,4096,8192,16384")
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a benchmark model folder")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "L", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, length, model_dir = args.child
        print(json.dumps(child(method, int(length), model_dir)), flush=True)
        return 0

    lengths = [int(x) for x in args.lengths.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bc.build_model(args.model_dir or Path(tmp) / "model")
        print(bc.header("Memory: peak RSS of scoring L tokens (one child process per measurement)"))
        for method, what in METHODS.items():
            print(f"- {method}: {what}")
        print("- peak RSS = VmHWM of the child's /proc/self/status; 'after load' = VmHWM once the model is "
              "loaded, before the pass; one run per cell (allocator behaviour moves peaks between runs by up to ~0.2 GiB)\n")
        results = {}
        for length in lengths:
            for method in METHODS:
                results[(method, length)] = measure(method, length, model_dir)
                r = results[(method, length)]
                print(f"  measured {method} L={length}: " + (r.get("error") or
                      f"peak {gib(r['peak_kb'])} GiB, ppl {r['ppl']:.1f}, {r['seconds']:.1f}s"), file=sys.stderr)
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
            print(f"Target memory at most linear in L (harness pass increment <= x2 per doubling, +15% noise): "
                  f"{', '.join(f'x{g:.2f}' for g in growth)} -> {bc.verdict(linear)}")
        print(f"\nload average at end: {bc.load_now()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
