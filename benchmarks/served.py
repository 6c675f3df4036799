"""SmolLM2-135M served by llama.cpp's server vs the in-process HF path on the same GGUF, side by side (CPU).

    python benchmarks/served.py [--lengths 1k,2k,4k,8k] [--samples 2]

1. Passkey through `rope-harness run` both ways (3 depths x samples x lengths): answers compared prompt by
   prompt, wall time of each run.
2. Answer log-probs and ppl from llama.cpp's echoed prompt log-probs (the only way its server returns them:
   a full vocabulary sort per token in Python, so short prompts only) vs the HF engine's.
llama.cpp computes on the GGUF's quantised blocks (Q4_1 / Q8_0), the HF path on the same weights dequantised
to float32: the gaps below are that difference, measured. Prints one markdown section.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_passkey(out: Path, lengths: str, samples: int, serve: bool) -> float:
    from harness.cli import main

    argv = ["run", "--model", "smollm2", "--task", "passkey", "--lengths", lengths, "--depths", "0.1,0.5,0.9",
            "--samples", str(samples), "--out", str(out), "--no-progress", "--no-report"]
    start = time.time()
    code = main(argv + (["--serve", "llama.cpp"] if serve else []))
    if code != 0:
        raise SystemExit(f"run {'served' if serve else 'in-process'} exited {code}")
    return time.time() - start


def answers(out: Path) -> dict[tuple, dict]:
    from harness.store import latest_records

    return {(r["length"], r["depth"], r["sample"]): r for r in latest_records(out).values()}


def logprob_gaps(n_tokens: int, prompts: int) -> list[str]:
    """Echoed log-probs of short prompts through the server vs the in-process engine (same GGUF)."""
    from harness import models
    from harness.engine import Engine
    from harness.rope_config import RopeOverride
    from harness.serving.backend import ServedEngine, served
    from tasks.passkey import build_prompt

    checkpoint = models.describe("smollm2", RopeOverride())
    checkpoint.tokenizer = models.load_tokenizer("smollm2")
    local = Engine(models.load(checkpoint))
    rows, gaps, text_gap = [], [], None
    with tempfile.TemporaryDirectory() as tmp, served(checkpoint, "llama.cpp", [], max_len=n_tokens + 64,
                                                      log=Path(tmp) / "server.log") as (engine, _):
        scorer = ServedEngine(engine.client, engine="llama.cpp", version=engine.version, scores=True)
        for sample in range(prompts):
            prompt = build_prompt(checkpoint.tokenizer, n_tokens, 0.5, sample)
            got = scorer.score_and_generate_batch([prompt.ids], [prompt.answer_ids], 1).values[0][0]
            want = local.answer_score(prompt.ids, prompt.answer_ids)
            gaps.append(abs(got.logprob - want.logprob))
            rows.append(f"| passkey answer, L={n_tokens}, sample {sample} | {want.logprob:.4f} | "
                        f"{got.logprob:.4f} | {got.logprob - want.logprob:+.4f} |")
        ids = prompt.ids
        result = engine.client.complete(list(ids), 1, logprobs=1, echo=True)
        served_lp = result["prompt_logprobs"][2:]  # llama.cpp: none for the first token after BOS
        local_nll = local.token_nll(ids)[1:]
        ppl_served = math.exp(-sum(served_lp) / len(served_lp))
        ppl_local = math.exp(float(local_nll.double().mean()))
        text_gap = abs(ppl_served / ppl_local - 1)
        rows.append(f"| ppl of a {len(ids)}-token prompt (tokens 2..L) | {ppl_local:.4f} | {ppl_served:.4f} "
                    f"| {ppl_served / ppl_local - 1:+.2%} |")
    return rows + [f"\nLargest answer log-prob gap {max(gaps):.4f} nats; ppl relative gap {text_gap:.2%}."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1k,2k,4k,8k")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--logprob-tokens", type=int, default=512)
    parser.add_argument("--logprob-prompts", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf_time = run_passkey(Path(tmp) / "hf", args.lengths, args.samples, serve=False)
        cpp_time = run_passkey(Path(tmp) / "cpp", args.lengths, args.samples, serve=True)
        hf, cpp = answers(Path(tmp) / "hf"), answers(Path(tmp) / "cpp")
        command = json.loads((Path(tmp) / "cpp" / "run.json").read_text())["settings"]
    lines = ["## SmolLM2-135M: llama.cpp server vs the in-process HF path (same GGUF, CPU)", "",
             f"Reproduce: `python benchmarks/served.py --lengths {args.lengths} --samples {args.samples}`. "
             f"Server command: `{next(iter(command.values()))['serve_command']}`.", "",
             "| L | prompts | HF correct | llama.cpp correct | same answer |", "|---|---|---|---|---|"]
    for length in sorted({k[0] for k in hf}):
        keys = [k for k in hf if k[0] == length]
        same = sum(hf[k]["answer"] == cpp[k]["answer"] for k in keys)
        lines.append(f"| {length} | {len(keys)} | {sum(hf[k]['correct'] for k in keys)} | "
                     f"{sum(cpp[k]['correct'] for k in keys)} | {same}/{len(keys)} |")
    differ = [f"L={k[0]} depth {k[1]} sample {k[2]}: HF {hf[k]['generated']!r} vs llama.cpp "
              f"{cpp[k]['generated']!r}" for k in sorted(hf) if hf[k]["answer"] != cpp[k]["answer"]]
    lines += ["", f"Wall time for the {len(hf)} prompts: HF {hf_time:.0f} s, llama.cpp {cpp_time:.0f} s "
              f"(llama.cpp / HF = {cpp_time / hf_time:.2f}; each includes loading or starting the model).",
              ""]
    lines += [f"- differs: {d}" for d in differ] or ["Every answer is the same."]
    lines += ["", "| echoed log-probs | HF (float32) | llama.cpp (quantised) | difference |",
              "|---|---|---|---|"]
    try:
        lines += logprob_gaps(args.logprob_tokens, args.logprob_prompts)
    except RuntimeError as exc:  # ServerError: the server cannot return these log-probs for this model
        lines.append(f"| not measured: {exc} | | | |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
