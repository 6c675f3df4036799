"""harness.factory: the dry run plans what the run's engine plans, engines not installed are refused before
anything is written, and every device has a memory budget (the CPU's a share of the memory at start)."""

from __future__ import annotations

import dataclasses
import shutil
import sys

import pytest

from harness import factory
from harness.cli import main
from harness.engine import memory_guard, planner
from harness.engine.engine import Engine
from harness.model import models
from harness.run.store import read_jsonl
from harness.run.suite import RunOptions, Setting


def options(**kw) -> RunOptions:
    from pathlib import Path

    return RunOptions(out=Path("unused"), **kw)


def test_the_dry_runs_plans_are_the_run_engines_plans(tiny_llama):
    """Same planner, same inputs: the dry run (no weights) and the loaded engine plan every length alike,
    for scoring and for a prompt to generate after (its cache counted), with and without a budget."""
    setting = Setting(str(tiny_llama))
    checkpoint = models.describe(setting.model)
    loaded = models.load(checkpoint)
    seen = set()
    for budget in (None, 6 << 20, 40 << 20):
        dry = factory.planner(setting, checkpoint.config, options(max_memory=budget))
        engine = Engine(loaded, max_memory=factory.budget("cpu", budget))
        for length in (64, 4096, 65536, 1 << 20):
            for generation in (False, True):
                plan = dry(length, generation)
                assert plan == engine.plan(length, generation=generation), (budget, length, generation)
                seen.add((plan.strategy, plan.fits))
    assert {("single", True), ("prefill", False)} <= seen  # the grid reaches both sides of the budget


def test_the_cpu_budget_is_a_stated_share_of_the_memory_at_start(monkeypatch):
    monkeypatch.setattr(planner, "available_at_start", lambda: 10 << 30)
    assert factory.budget("cpu", None) == int(planner.CPU_SHARE * (10 << 30))
    assert factory.budget("cpu", 123) == 123  # --max-memory wins
    assert "of the memory available at start" in planner.budget_source("cpu", None)
    assert memory_guard.available_at_start() > 0


def test_a_huge_cell_is_an_oom_record_in_seconds_without_max_memory(tiny_llama, tmp_path, monkeypatch,
                                                                   capsys):
    """Without --max-memory the CPU run plans against its default budget: a 10M-token passkey cell is
    refused by the planner (an oom record, retry false, no rerun advised), and the dry run says so first."""
    monkeypatch.setattr(planner, "available_at_start", lambda: 1 << 30)
    args = ["run", "--model", str(tiny_llama), "--task", "passkey", "--lengths", "10000k", "--depths", "0.5",
            "--samples", "1", "--no-progress", "--no-report", "--out", str(tmp_path / "r")]
    assert main([*args, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "1 over the memory budget (recorded oom)" in dry and "memory budget on cpu: 819.2 MiB (80%" in dry
    assert main(args) == 1
    (record,) = read_jsonl(tmp_path / "r", "records")
    assert record["status"] == "oom" and record["error"].startswith("planner:") and record["retry"] is False
    assert "819.2 MiB (80% of the memory available at start" in record["error"]
    out = capsys.readouterr().out
    assert "a rerun refuses them again" in out and "rerun the same command to retry" not in out


def test_an_engine_that_is_not_installed_is_refused_before_anything_is_written(tiny_llama, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)  # no vllm on PATH
    out = tmp_path / "r"
    args = ["run", "--model", str(tiny_llama), "--serve", "vllm", "--task", "passkey", "--lengths", "512",
            "--samples", "1", "--out", str(out)]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    want = f"rope-harness: error: --serve vllm: vllm is not installed in {sys.executable}: pip install"
    assert err[-1].startswith(want) and "--engine-python PATH" in err[-1]
    assert main([*args, "--dry-run"]) == 0  # a dry run notes it instead
    assert "vllm is not installed" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("change,message", [
    ({"serve": "tgi"}, "unknown --serve 'tgi': use one of vllm, sglang, llama.cpp"),
    ({"server_urls": ["127.0.0.1:8000"]}, "is not an http(s) URL"),
    ({"tensor_parallel": 2}, "apply to a served engine"),
    ({"serve": "vllm", "data_parallel": 0}, "--data-parallel must be an integer >= 1"),
    ({"engine_python": "/env/bin/python"}, "--engine-python is the interpreter of a launched engine"),
])
def test_serving_options_are_checked_in_one_line(change, message):
    from harness.core.errors import InputError

    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        factory.check_options(dataclasses.replace(Setting("m"), **change))


def test_the_dry_run_estimates_the_wall_time_from_a_cached_calibration(tiny_llama, tmp_path, monkeypatch,
                                                                       capsys):
    """The estimate is the planner's work over a throughput measured once (cached: a second dry run measures
    nothing), per setting and in total, said to be an estimate; it grows with the work asked."""
    from harness.engine import estimate

    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    measured = []
    real = estimate._measure
    monkeypatch.setattr(estimate, "_measure", lambda dtype: measured.append(dtype) or real(dtype))

    def dry(*lengths: int) -> str:
        args = ["run", "--model", str(tiny_llama), "--lengths", ",".join(map(str, lengths)), "--samples", "2",
                "--out", str(tmp_path / "r"), "--dry-run", "--no-progress"]
        assert main(args) == 0
        out = capsys.readouterr().out
        (line,) = [x for x in out.splitlines() if x.startswith("estimated wall time: ")]
        assert "an estimate" in line
        return line

    dry(256)
    assert measured == ["float32"] and (tmp_path / "cache" / "calibration.json").is_file()
    dry(256)
    assert measured == ["float32"]  # cached
    config = models.describe(str(tiny_llama)).config
    speed = estimate.Throughput(1e9, 1e-9)
    short, long = (estimate.seconds(config, 10**6, [(n, 0)], speed) for n in (1024, 4096))
    assert 4 < long / short < 16  # linear matmuls plus quadratic attention
    assert estimate.seconds(config, 10**6, [(1024, 32)], speed) > short  # greedy steps cost time
