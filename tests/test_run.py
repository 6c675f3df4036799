"""`rope-harness run`: ppl@L contract, records schema, resume, OOM, bad input, sharding."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.cli import main
from harness.core.contract import Ran, Scored
from harness.model import models, rope_config
from harness.run.store import read_jsonl

RECORD_KEYS = {"task", "setting", "model", "rope_type", "rope_theta", "rope_params", "rotary_dim",
               "pretrain_base", "train_len", "tune_len", "rope_hash", "length", "depth", "sample", "seed",
               "status", "error", "dtype", "attn", "plan", "ppl", "nll", "tokens", "bos", "doc_id", "offset",
               # experiment identity (docs/design.md, Records) and the order of a cell's records
               "fingerprint", "model_fingerprint", "corpus", "task_identity", "sample_hash", "cell_key",
               "recorded_at"}


def records(folder: Path) -> list[dict]:
    return list(read_jsonl(folder, "records"))


def run(tiny, corpus, out, *extra) -> int:
    return main(["run", "--model", str(tiny), "--corpus", str(corpus), "--out", str(out), "--no-progress",
                 "--no-report", "--lengths", "32,100,200", "--samples", "2", *extra])


@pytest.mark.parametrize("bos", [True, False])
def test_ppl_at_L_is_a_plain_forward_of_exactly_L_tokens(bos, tiny_llama, text_corpus, tmp_path):
    assert run(tiny_llama, text_corpus, tmp_path / "r", *([] if bos else ["--no-bos"]), "--rope-theta",
               "5e4") == 0
    rows = records(tmp_path / "r")
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    loaded = models.load(str(tiny_llama), rope_config.RopeOverride(theta=5e4))
    tokens = loaded.tokenizer(text_corpus.read_text(), add_special_tokens=False)["input_ids"]
    size = 200 - (1 if bos else 0)
    for r in rows:
        sample = tokens[r["sample"] * size:(r["sample"] + 1) * size]
        ids = ([256] if bos else []) + sample
        ids = ids[:r["length"]]
        with torch.no_grad():
            logits = loaded.model(torch.tensor([ids])).logits[0, :-1]
        nll = F.cross_entropy(logits, torch.tensor(ids[1:]))
        assert r["ppl"] == pytest.approx(float(torch.exp(nll)), rel=1e-5)
        assert r["tokens"] == r["length"] - 1 and r["bos"] is bos and r["offset"] == r["sample"] * size


def test_records_schema_positions_and_run_json(tiny_llama, text_corpus, tmp_path):
    assert run(tiny_llama, text_corpus, tmp_path / "r") == 0
    rows = records(tmp_path / "r")
    for r in rows:
        assert set(r) >= RECORD_KEYS, RECORD_KEYS - set(r)
        assert r["depth"] is None and r["error"] is None and isinstance(r["rope_params"], str)
        assert r["setting"] == f"{tiny_llama.name}:default:10000"
    assert sorted((r["length"], r["sample"]) for r in rows) == [(L, s) for L in (32, 100, 200)
                                                                for s in (0, 1)]
    positions = list(read_jsonl(tmp_path / "r", "positions"))
    assert {p["length"] for p in positions} == {200}
    for sample in (0, 1):
        mine = [p for p in positions if p["sample"] == sample]
        assert sum(p["tokens"] for p in mine) == 199  # every prediction of the longest pass, once
        weighted = sum(p["nll"] * p["tokens"] for p in mine) / 199
        rec = next(r for r in rows if r["sample"] == sample and r["length"] == 200)
        assert weighted == pytest.approx(rec["nll"], rel=1e-6)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["ended"] and info["versions"]["transformers"] and info["cells"]["ok"] == 6
    assert info["command"] and info["device"] and info["world_size"] == 1
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(models.__file__).parent)
    # the commit of the code that ran, when it has one
    assert info["git_commit"] == (head.stdout.strip() or None)
    assert not (tmp_path / "r" / ".lock").exists()


def test_rerun_resumes_and_changed_setting_never_reuses_cells(tiny_llama, text_corpus, tmp_path, capsys):
    out = tmp_path / "r"
    assert run(tiny_llama, text_corpus, out) == 0
    first = records(out)
    assert run(tiny_llama, text_corpus, out) == 0
    assert records(out) == first  # nothing rerun, nothing duplicated
    assert run(tiny_llama, text_corpus, out, "--samples", "3") == 0  # only the new sample runs
    assert len(records(out)) == 9
    assert run(tiny_llama, text_corpus, out, "--samples", "3", "--rope-theta", "2e4") == 0
    rows = records(out)
    assert len(rows) == 18 and len({r["cell_key"] for r in rows}) == 18


def test_fewer_samples_than_asked_warns_and_runs_those(tiny_llama, text_corpus, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_llama), "--corpus", str(text_corpus), "--out",
                 str(tmp_path / "r"), "--no-progress", "--no-report", "--lengths", "5000", "--samples",
                 "9"]) == 0
    available = len(text_corpus.read_bytes()) // 4999
    assert "yields only" in capsys.readouterr().err
    assert len(records(tmp_path / "r")) == available < 9
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert list(info["samples_available"].values())[0] == {"perplexity": available}


def test_a_task_under_the_evidence_bar_is_warned_before_it_runs(tiny_llama, text_corpus, tmp_path, capsys):
    args = ["run", "--model", str(tiny_llama), "--corpus", str(text_corpus), "--no-progress", "--no-report",
            "--lengths", "512", "--task", "perplexity,passkey", "--depths", "0.2,0.5,0.8", "--dry-run"]
    assert main([*args, "--out", str(tmp_path / "a"), "--samples", "2"]) == 0
    err = capsys.readouterr().err
    assert "perplexity (2), passkey (2): fewer samples per length than the report's evidence bar (3" in err
    assert main([*args, "--out", str(tmp_path / "b"), "--samples", "3"]) == 0
    assert "evidence bar" not in capsys.readouterr().err


def test_oom_is_retried_with_smaller_chunk_then_recorded(tiny_llama, text_corpus, tmp_path, monkeypatch):
    """The engine falls back by itself (a 4x smaller prefill chunk); records carry the plan that ran."""
    from harness.engine import engine

    plans = []
    real_score = engine.Engine._score

    def flaky(self, ids, first, with_rank, plan):
        plans.append(str(plan))
        if len(plans) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_score(self, ids, first, with_rank, plan)

    monkeypatch.setattr(engine.Engine, "_score", flaky)
    assert run(tiny_llama, text_corpus, tmp_path / "a", "--samples", "1") == 0
    assert plans[0] == "single" and plans[1].startswith("prefill:")  # the retry: a smaller prefill chunk
    assert {(r["status"], r["plan"]) for r in records(tmp_path / "a")} == {("ok", plans[1])}

    prefills = []
    real_prefill = engine.Engine._prefill

    def flaky_prefill(self, tensor, plan=None):
        prefills.append(str(plan))
        if len(prefills) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_prefill(self, tensor, plan)

    monkeypatch.setattr(engine.Engine, "_prefill", flaky_prefill)
    assert main(["run", "--model", str(tiny_llama), "--task", "passkey", "--lengths", "300", "--depths",
                 "0.5", "--samples", "1", "--out", str(tmp_path / "p"), "--no-progress", "--no-report"]) == 0
    (row,) = records(tmp_path / "p")
    assert prefills == ["single", "prefill:75"]  # 300 tokens: a quarter of the single pass
    assert row["status"] == "ok" and row["plan"] == "prefill:75"  # the plan that produced the record

    def always(self, *args, **kwargs):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    monkeypatch.setattr(engine.Engine, "_score", always)
    assert run(tiny_llama, text_corpus, tmp_path / "b") == 1
    rows = records(tmp_path / "b")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"oom"} and "simulated" in rows[0]["error"]


def test_nan_loss_is_an_error_and_max_memory_records_oom(tiny_llama, text_corpus, tmp_path, monkeypatch):
    assert run(tiny_llama, text_corpus, tmp_path / "m", "--max-memory", "1MiB") == 1
    rows = records(tmp_path / "m")
    assert {r["status"] for r in rows} == {"oom"} and "planner" in rows[0]["error"]
    assert "budget 1.0 MiB (--max-memory)" in rows[0]["error"]  # a budget in MiB reads as MiB, not "0.00 GiB"
    from harness.engine import engine

    monkeypatch.setattr(engine.Engine, "token_nll_batch",
                        lambda self, rows, plan=None: Scored([torch.full((len(r) - 1,), float("nan"))
                                                              for r in rows], [Ran("single", 1)] * len(rows)))
    assert run(tiny_llama, text_corpus, tmp_path / "n") == 1
    assert {r["status"] for r in records(tmp_path / "n")} == {"error"}


@pytest.mark.parametrize("extra, message", [
    (["--rope-type", "bogus"], "unknown --rope-type"),
    (["--rope-theta", "0.5"], "--rope-theta must be > 1"),
    (["--lengths", "1000000"], "no document in corpus"),
    (["--lengths", "a,b"], "--lengths"),
    (["--task", "nope"], "unknown task"),
    (["--max-memory", "lots"], "--max-memory"),
    (["--rope-param", "novalue"], "KEY=VALUE"),
    (["--sliding-stride", "0"], "--sliding-stride must be a positive"),
    (["--sliding-stride", "-5"], "--sliding-stride must be a positive"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(extra, message, tiny_llama, text_corpus, tmp_path,
                                                            capsys):
    assert run(tiny_llama, text_corpus, tmp_path / "r", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_missing_model_and_corpus(text_corpus, tmp_path, capsys):
    assert run(tmp_path / "nope", text_corpus, tmp_path / "r") == 2
    assert run(text_corpus.parent, tmp_path / "none.txt", tmp_path / "r") == 2
    assert not (tmp_path / "r").exists()


def test_dry_run_lists_cells_without_loading_or_writing(tiny_llama, text_corpus, tmp_path, capsys):
    assert run(tiny_llama, text_corpus, tmp_path / "r", "--dry-run", "--max-memory", "20MiB") == 0
    out = capsys.readouterr().out
    assert "6 cells" in out and "single" in out
    assert not (tmp_path / "r").exists()


def _cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted(tiny_llama, text_corpus, tmp_path):
    args = ["run", "--model", tiny_llama, "--corpus", text_corpus, "--no-progress", "--no-report",
            "--lengths", "64,128,256,512", "--samples", "6", "--rope-type", "dynamic", "--rope-factor", "2"]
    clean = _cli(*args, "--out", tmp_path / "clean")
    proc = _cli(*args, "--out", tmp_path / "killed")
    path = tmp_path / "killed" / "records.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or path.read_bytes().count(b"\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert clean.wait() == 0
    partial = path.read_bytes().count(b"\n")
    assert 3 <= partial < 24
    resumed = _cli(*args, "--out", tmp_path / "killed")
    assert resumed.wait() == 0, resumed.stderr.read().decode()[-2000:]
    got, want = records(tmp_path / "killed"), records(tmp_path / "clean")
    assert len(got) == 24 and len({r["cell_key"] for r in got}) == 24
    key = lambda r: r["cell_key"]  # noqa: E731
    assert ([(r["cell_key"], r["ppl"]) for r in sorted(got, key=key)]
            == [(r["cell_key"], r["ppl"]) for r in sorted(want, key=key)])


def test_lock_stops_a_second_writer(tiny_llama, text_corpus, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (out / ".lock").write_text(str(holder.pid))
        assert run(tiny_llama, text_corpus, out) == 2
        assert "another run" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert run(tiny_llama, text_corpus, out) == 0  # a stale lock (dead pid) is taken over


def test_cells_finished_while_waiting_for_the_lock_are_not_rerun(tiny_llama, text_corpus, tmp_path,
                                                                  monkeypatch, capsys):
    """Run B reads the folder while run A still writes it; A finishes and lets go before B takes the lock."""
    from harness.run.store import Store

    assert run(tiny_llama, text_corpus, tmp_path / "a") == 0
    finished_by_a = (tmp_path / "a" / "records.jsonl").read_text()
    real_open = Store.open

    def open_after_a(self):
        (self.folder / "records.jsonl").write_text(finished_by_a)  # A's last cells land before B's lock
        real_open(self)

    (tmp_path / "b").mkdir()
    monkeypatch.setattr(Store, "open", open_after_a)
    assert run(tiny_llama, text_corpus, tmp_path / "b") == 0
    assert records(tmp_path / "b") == records(tmp_path / "a")  # nothing run twice
    assert "0 cells run now, 6 already recorded" in capsys.readouterr().out


def test_run_folder_that_cannot_be_made_is_bad_input():
    from harness.core.errors import InputError
    from harness.run.store import Store

    with pytest.raises(InputError, match="pass a writable --out"):
        Store(Path("/proc/rope-harness-cannot-exist/run")).open()


@pytest.mark.slow
def test_two_ranks_split_cells_and_equal_one_process(tiny_llama, text_corpus, tmp_path):
    args = ["--model", str(tiny_llama), "--corpus", str(text_corpus), "--no-progress", "--no-report",
            "--lengths", "64,128", "--samples", "4"]
    assert main(["run", *args, "--out", str(tmp_path / "one")]) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29533", "-m",
                           "harness.cli", "run", *args, "--out", str(tmp_path / "two")], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "two").glob("records*.jsonl"))
    assert shards == ["records.rank0.jsonl", "records.rank1.jsonl"]
    assert all((tmp_path / "two" / s).stat().st_size > 0 for s in shards)  # both ranks did work
    one = sorted((r["cell_key"], r["ppl"]) for r in records(tmp_path / "one"))
    two = sorted((r["cell_key"], r["ppl"]) for r in records(tmp_path / "two"))
    assert [k for k, _ in one] == [k for k, _ in two]
    assert all(a == pytest.approx(b, rel=1e-6) for (_, a), (_, b) in zip(one, two, strict=True))


def test_cpu_address_space_cap_turns_overallocation_into_a_recorded_oom():
    from harness.engine.memory_guard import address_space_limit, is_oom

    with address_space_limit(256 << 20, "cpu"):
        with pytest.raises((RuntimeError, MemoryError)) as err:
            torch.empty(1 << 31, dtype=torch.uint8).fill_(1)  # 2 GiB > the 256 MiB budget
        assert is_oom(err.value)
        small = torch.ones(1 << 20)  # within budget still works
        assert float(small.sum()) == 1 << 20
    big = torch.empty(1 << 31, dtype=torch.uint8)  # the cap is lifted afterwards
    del big


def test_lengths_that_fit_are_scored_when_the_longest_is_refused(tiny_llama, text_corpus, tmp_path, capsys,
                                                                  monkeypatch):
    """A planner refusal is deterministic: the shorter lengths of the shared pass still run, and the console
    says what would help instead of 'rerun'."""
    from harness.engine import engine as engine_module

    plan = engine_module.Engine.plan

    def only_up_to_128(self, length, strategy=None, generation=False, chunk=None):  # 128 tokens fit
        found = plan(self, length, strategy, generation, chunk)
        return found if length <= 128 else dataclasses.replace(found, fits=False)

    monkeypatch.setattr(engine_module.Engine, "plan", only_up_to_128)
    assert run(tiny_llama, text_corpus, tmp_path / "r", "--max-memory", "8GiB") == 1  # lengths 32,100,200
    status = {(r["length"], r["sample"]): r["status"] for r in records(tmp_path / "r")}
    assert {status[(n, s)] for n in (32, 100) for s in (0, 1)} == {"ok"}
    assert status[(200, 0)] == status[(200, 1)] == "oom"
    out = capsys.readouterr().out
    assert "2 cell(s) at L >= 200 exceed the memory budget by the planner's estimate" in out
    assert "raise --max-memory" in out and "--strategy stream" in out and "rerun the same command" not in out


def test_progress_in_a_log_is_one_plain_line_per_group(tiny_llama, text_corpus, tmp_path, capsys):
    """Not a terminal (a log file, CI): no redrawn bar piling onto one line, a counted line per group."""
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny_llama), "--corpus", str(text_corpus), "--out", str(out),
                 "--no-report", "--lengths", "32,64", "--samples", "2"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " perplexity: " in line]
    assert [line.split(": ")[1].split(",")[0] for line in lines] == ["2/4 cells", "4/4 cells"]
    assert "\r" not in err


def _without_bos(tiny: Path, out: Path) -> Path:
    """A copy of `tiny` whose tokenizer has no BOS token (as Qwen2.5's)."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(tiny, out)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.bos_token = None
    tokenizer.save_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).bos_token_id is None
    return out


MEASURED = ("status", "ppl", "nll", "bos", "offset", "sample_hash", "task_identity", "cell_key", "correct",
            "answer_logprob")


@pytest.mark.slow
def test_a_suite_mixing_bos_and_no_bos_models_scores_each_as_it_scores_alone(tiny_llama, text_corpus,
                                                                            tmp_path):
    """One task block shared by a model with BOS and one without: each setting's records equal its solo
    run's (the shared task parameters are never changed for one setting)."""
    plain = _without_bos(tiny_llama, tmp_path / "no-bos")
    tasks = (f'[[tasks]]\nname = "perplexity"\nlengths = [64, 128]\nsamples = 2\ncorpus = "{text_corpus}"\n'
             '[[tasks]]\nname = "passkey"\nlengths = [256]\ndepths = [0.5]\nsamples = 1\n')
    models_ = {"with-bos": tiny_llama, "no-bos": plain}

    def suite(labels: list[str], out: Path) -> list[dict]:
        settings = "".join(f'[[settings]]\nmodel = "{models_[label]}"\nlabel = "{label}"\n'
                           for label in labels)
        path = out.with_suffix(".toml")
        path.write_text(settings + tasks)
        assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-report"]) == 0
        return records(out)

    def measured(rows: list[dict], label: str) -> dict:
        return {(r["task"], r["length"], r["sample"]): {k: r.get(k) for k in MEASURED}
                for r in rows if r["setting"] == label}

    mixed = suite(["with-bos", "no-bos"], tmp_path / "mixed")
    for label in models_:
        alone = measured(suite([label], tmp_path / label), label)
        assert measured(mixed, label) == alone and len(alone) == 5
    bos = {r["setting"]: r["bos"] for r in mixed if r["task"] == "perplexity"}
    assert bos == {"with-bos": True, "no-bos": False}
