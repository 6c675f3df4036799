"""SmolLM2-135M served by llama.cpp's server vs the in-process HF path on the same GGUF, side by side (CPU).

    python benchmarks/served.py [--lengths 1k,2k,4k,8k] [--samples 2] [--gaps-only]

1. Passkey through `rope-harness run` both ways (3 depths x samples x lengths): answers compared prompt by
   prompt, wall time of each run, and the served run's probe (harness/serving/probe.py).
2. One passkey prompt + answer per length scored by llama.cpp's library in-process (logits_all: the server
   cannot return these log-probs for a model without a BOS) and by the HF engine: the answer log-prob, the
   prompt's ppl and the mean per-token NLL gap.
llama.cpp computes on the GGUF's quantised blocks (Q4_1 / Q8_0), the HF path on the same weights dequantised
to float32: the gaps below are that difference, measured. Prints one markdown section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

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
    from harness.run.store import latest_records

    return {(r["length"], r["depth"], r["sample"]): r for r in latest_records(out).values()}


def llama_cpp_nll(llm: Any, ids: list[int]) -> np.ndarray:
    """Per-token NLL of ids[1:] from llama.cpp's own logits (the library the server runs, in-process)."""
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)  # row i predicts token i + 1
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return log_z - logits[np.arange(len(ids) - 1), ids[1:]]


def logprob_gaps(lengths: list[int]) -> list[str]:
    """Passkey prompt + answer at each length through llama.cpp's library (logits of every position, which
    its server cannot return for this model) and through the HF engine: answer log-prob and ppl of the prompt
    tokens, side by side."""
    from llama_cpp import Llama

    from harness.engine.engine import Engine
    from harness.model import models
    from harness.model.rope_config import RopeOverride
    from tasks.passkey import build_prompt

    checkpoint = models.describe("smollm2", RopeOverride())
    checkpoint = dataclasses.replace(checkpoint, tokenizer=models.load_tokenizer("smollm2"))
    local = Engine(models.load(checkpoint))
    llm = Llama(checkpoint.path, n_ctx=max(lengths) + 64, logits_all=True, verbose=False)
    rows, answer_gaps, ppl_gaps = [], [], []
    for length in lengths:
        prompt = build_prompt(checkpoint.tokenizer, length, 0.5, 0)
        ids, k = [*prompt.ids, *prompt.answer_ids], len(prompt.answer_ids)
        ours = local.token_nll(ids).double().numpy()
        theirs = llama_cpp_nll(llm, ids)
        answer = (-ours[-k:].sum(), -theirs[-k:].sum())
        ppl = (math.exp(ours[:-k].mean()), math.exp(theirs[:-k].mean()))
        answer_gaps.append(abs(answer[1] - answer[0]))
        ppl_gaps.append(abs(ppl[1] / ppl[0] - 1))
        rows.append(f"| {length} | {answer[0]:.4f} | {answer[1]:.4f} | {answer[1] - answer[0]:+.4f} | "
                    f"{ppl[0]:.4f} | {ppl[1]:.4f} | {ppl[1] / ppl[0] - 1:+.2%} | "
                    f"{np.abs(theirs - ours).mean():.4f} |")
    rows += [f"\nLargest answer log-prob gap {max(answer_gaps):.4f} nats; largest prompt ppl relative gap "
             f"{max(ppl_gaps):.2%} (the passkey filler repeats: its ppl is near 1).", "",
             "| L | ppl@L of held-out stdlib text, HF (float32) | llama.cpp (quantised) | relative |",
             "|---|---|---|---|"]
    return rows + text_ppl_rows(local, llm, checkpoint.tokenizer, lengths)


def text_ppl_rows(local: Any, llm: Any, tokenizer: Any, lengths: list[int]) -> list[str]:
    """ppl@L of one held-out stdlib sample of max(lengths) tokens, every L a prefix of one pass each way."""
    from harness.data.corpus import make_samples

    ids = list(make_samples(tokenizer, "stdlib", max(lengths), 1, bos=False)[0].tokens)
    ours, theirs = local.token_nll(ids).double().numpy(), llama_cpp_nll(llm, ids)
    rows = []
    for length in lengths:
        a, b = math.exp(ours[: length - 1].mean()), math.exp(theirs[: length - 1].mean())
        rows.append(f"| {length} | {a:.4f} | {b:.4f} | {b / a - 1:+.2%} |")
    return rows


def passkey_section(lengths: str, samples: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        hf_time = run_passkey(Path(tmp) / "hf", lengths, samples, serve=False)
        cpp_time = run_passkey(Path(tmp) / "cpp", lengths, samples, serve=True)
        hf, cpp = answers(Path(tmp) / "hf"), answers(Path(tmp) / "cpp")
        command = json.loads((Path(tmp) / "cpp" / "run.json").read_text())["settings"]
    probe = next(iter(cpp.values()))
    lines = [f"Reproduce: `python benchmarks/served.py --lengths {lengths} --samples {samples}`. "
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
              f"The run's probe: {probe.get('probe_verdict')}, mean |log-prob gap| {probe.get('probe_gap')} "
              f"nats over {probe.get('probe_tokens')} generated tokens.", ""]
    return lines + ([f"- differs: {d}" for d in differ] or ["Every answer is the same."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1k,2k,4k,8k")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--gaps-only", action="store_true", help="only the log-prob and ppl gaps (part 2)")
    args = parser.parse_args()
    from harness.core.values import parse_lengths

    lines = ["## SmolLM2-135M: llama.cpp server vs the in-process HF path (same GGUF, CPU)", ""]
    if not args.gaps_only:
        lines += passkey_section(args.lengths, args.samples)
    lines += ["", "| L | answer log-prob HF (float32) | llama.cpp (quantised) | difference | prompt ppl HF | "
              "llama.cpp | relative | mean abs per-token NLL gap |", "|---|---|---|---|---|---|---|---|"]
    lines += logprob_gaps(parse_lengths(args.lengths))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
