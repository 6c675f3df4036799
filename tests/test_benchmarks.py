"""benchmarks/gpu.py runs end to end before any GPU is at hand: its --smoke mode drives every code path
(strategies, the time box, batching, the served-engine rows on llama.cpp's server) on CPU with a tiny model;
--plan-only gives the README's 1M plan."""

import importlib.util
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_script(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def rows_of(text: str, first: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first}")]


@pytest.mark.slow
def test_gpu_script_smoke_runs_every_strategy_and_batching():
    out = gpu_script("--smoke")
    check_served_rows(out)
    cells = rows_of(out, "sdpa")
    assert [(r[1], r[2]) for r in cells] == [(n, s) for n in ("1024", "2048")
                                             for s in ("single", "stream", "prefill")]
    assert all(float(r[4]) > 0 for r in cells)  # measured seconds: no cell failed or was skipped
    assert [r[3].split(":")[0] for r in cells] == ["single", "stream", "prefill"] * 2
    (batch,) = rows_of(out, "512")
    # CPU auto batching: 2K tokens a forward = 4 rows of 512; bit-identical to one at a time
    assert int(batch[1]) == 4 and float(batch[-1]) == 0.0


def test_gpu_plan_streams_a_million_tokens_on_an_80gb_card():
    out = gpu_script("--plan-only", "--card-gib", "80", "--lengths", "1048576")
    plans = {r[1]: r for r in rows_of(out, "1048576")}
    assert plans["stream"][2].startswith("stream:") and plans["stream"][4] == "yes"
    assert float(plans["stream"][3]) < 80 and plans["prefill"][4].startswith("no")


SERVED_HEADER = ("| engine | L | prompts | greedy: same first k tokens | max abs answer log-prob diff "
                 "(nats) | prompt ppl: served vs in-process (each prompt) | served tok/s | "
                 "in-process tok/s |")


def check_served_rows(out: str) -> None:
    """The engines section: vLLM/SGLang gated on their package, llama.cpp's server launched through
    harness.serving with the YaRN override and stopped, each exact length compared with the in-process
    engine (greedy ids mostly agree: a dropped or mistranslated override agrees on none)."""
    for name in ("vllm", "sglang"):
        if importlib.util.find_spec(name) is None:
            assert f"{name} not installed: skipped (pip install {name})" in out
    assert SERVED_HEADER in out
    command = re.search(r"- llama\.cpp \S+: ready in \d+ s, stopped after its rows; `(.*)`", out).group(1)
    assert "llama_cpp.server" in command and "--rope_scaling_type 2 --rope_freq_scale 0.125" in command
    port = int(re.search(r"--port (\d+)", command).group(1))
    with socket.socket() as sock:  # the server is gone: nothing answers on its port
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    rows = rows_of(out, "llama.cpp")
    assert [r[1] for r in rows] == ["512", "1024", "2048"] and all(r[2] == "2" for r in rows)
    assert all(r[4] == "n/a (engine returns none)" and r[5].startswith("n/a (engine returns none) vs ")
               for r in rows)  # llama.cpp returns no prompt log-probs; the in-process ppl is still there
    assert all(float(x.replace(",", "")) > 0 for r in rows for x in (r[6], r[7]))
    same = [int(re.match(r"(\d+)/2 \(\d+/18 tokens\)$", r[3]).group(1)) for r in rows]
    assert sum(same) >= 3, rows
