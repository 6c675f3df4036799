"""benchmarks/gpu.py runs end to end before any GPU is at hand: its --smoke mode drives every code path
(strategies, the time box, batching) on CPU with a tiny model; --plan-only gives the README's 1M plan."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gpu_script(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def rows_of(text: str, first: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(f"| {first}")]


def test_gpu_script_smoke_runs_every_strategy_and_batching():
    out = gpu_script("--smoke")
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
