"""Shared helpers of the benchmark scripts: the benchmark model, machine/versions header, timing, tables.

Not a test module and not part of the package: the scripts import it from their own folder.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# quiet transformers / tqdm progress bars (children inherit the environment)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from anywhere without an install
    sys.path.insert(0, str(ROOT))

# The benchmark model: a tiny random Llama with a realistic 32,000-token vocabulary (the output head and
# its [T, vocab] logits dominate memory at long T) and max_position_embeddings 2,048, so 4K..16K are
# real extrapolation. Random weights (timing and memory do not depend on them), drawn 2.5x wider than
# the default init so that per-token losses depend visibly on positions and the RoPE setting.
MODEL = dict(vocab_size=32000, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048, bos_token_id=256,
             eos_token_id=257, pad_token_id=258, tie_word_embeddings=False, initializer_range=0.05)
GRID = (1024, 2048, 4096, 8192, 16384)


def build_model(path: Path, seed: int = 0, spec: dict | None = None) -> Path:
    """Save the benchmark Llama (float32, default RoPE theta 1e4) + the byte tokenizer to `path`; `spec`
    overrides entries of MODEL (another shape)."""
    import torch
    import transformers

    from harness.model.bytetok import byte_tokenizer

    if (path / "config.json").exists():
        return path
    config = transformers.LlamaConfig(**{**MODEL, **(spec or {})},
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def random_ids(n: int, seed: int = 0, vocab: int | None = None) -> list[int]:
    import torch

    vocab = vocab or MODEL["vocab_size"]
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header(title: str, where: str = "float32, sdpa attention, CPU", model: str | None = None) -> str:
    """Machine, load, versions and the benchmark model (or `model`, a description of another), as markdown
    lines."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    default = ", ".join(f"{k}={MODEL[k]}" for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                   "num_hidden_layers", "num_attention_heads",
                                                   "max_position_embeddings", "initializer_range"))
    return "\n".join([
        f"## {title}",
        "",
        f"- machine: {_cpu_model()}, {cores} cores usable, torch threads {torch.get_num_threads()}, "
        f"{platform.system()} {platform.release()}; load average (1/5/15 min) at start: {load}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{_version('transformers')}, rope-harness {_version('rope-harness')}, lm-eval {_version('lm-eval')}",
        (f"- benchmark model: random Llama, {default}, {where}" if model is None
         else f"- models: {model}, {where}"),
        "",
    ])


def load_now() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timings(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each function per repeat. Within a repeat the functions run back to back, in
    alternating order (A B, B A, ...), so that load from other processes and order effects hit every
    method alike; compare methods by `paired_ratio` (median over repeats of the per-repeat ratio)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def table(columns: list[str], rows: list[list[object]]) -> str:
    """A markdown table; floats are printed as given (format them before)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "holds" if ok else "MISSED"
