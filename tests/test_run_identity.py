"""Run folders never mix experiments; failed cells heal; the last record of a cell wins everywhere; every run
renders its report (docs/design.md: Records, Exit codes)."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import make_tiny

from harness.cli import build_parser, main
from harness.run.store import Store, latest_records, read_jsonl


def records(folder: Path) -> list[dict]:
    return list(read_jsonl(folder, "records"))


def run(model, corpus, out, *extra, lengths="32,64") -> int:
    return main(["run", "--model", str(model), "--corpus", str(corpus), "--out", str(out), "--no-progress",
                 "--no-report", "--lengths", lengths, "--samples", "1", "--label", "x", *extra])


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("other"), "llama", seed=1)


def test_records_carry_the_experiment_identity(tiny_llama, text_corpus, tmp_path):
    assert run(tiny_llama, text_corpus, tmp_path / "r", lengths="32,200") == 0
    rows = records(tmp_path / "r")
    from harness.model.bytetok import byte_tokenizer

    tokens = byte_tokenizer()(text_corpus.read_text(), add_special_tokens=False)["input_ids"][:199]
    for r in rows:
        assert r["fingerprint"] and r["rope_hash"] and r["seed"] == 0 and r["corpus"] == str(text_corpus)
        assert json.loads(r["task_identity"]) == {"bos": True, "corpus": str(text_corpus), "max_length": 200,
                                                  "sliding_stride": None}
        assert r["sample_hash"] == hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()[:16]


@pytest.mark.parametrize("change, what", [
    (["--rope-theta", "2e4"], "the RoPE setting differs: rope_theta 20000 vs the folder's 10000"),
    (["MODEL"], "the model differs"),
    (["CORPUS"], "the perplexity corpus differs"),
    (["--lengths", "32,100"], "max_length 100 vs the folder's 64"),
    (["--seed", "3"], "the perplexity seed differs: 3 vs the folder's 0"),
    (["--no-bos"], "bos False vs the folder's True"),
])
def test_another_experiment_under_a_label_is_refused_before_anything_is_written(
        change, what, tiny_llama, other_model, text_corpus, tmp_path, capsys):
    out = tmp_path / "r"
    assert run(tiny_llama, text_corpus, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    model, corpus, extra = tiny_llama, text_corpus, [c for c in change if c not in ("MODEL", "CORPUS")]
    if "MODEL" in change:
        model = other_model
    if "CORPUS" in change:
        corpus = tmp_path / "other.txt"
        corpus.write_text(text_corpus.read_text()[::-1])
    assert run(model, corpus, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert what in err and "another --out, or another --label" in err and "\n" not in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written
    assert run(model, corpus, out, *extra, "--label", "y") == 0  # the fix: another label in the same folder


def test_corrected_law_inputs_reuse_every_record_and_reach_the_report(tiny_llama, text_corpus, tmp_path,
                                                                      capsys):
    """The law's inputs are analysis-time facts: a rerun with them corrected computes nothing again, and the
    report (and the console's answer) use the corrected ones; an input only assumed is said to be."""
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny_llama), "--corpus", str(text_corpus), "--out", str(out),
                 "--no-progress", "--lengths", "32,64", "--samples", "1"]) == 0
    err = capsys.readouterr().err
    assert "law inputs of tiny_llama0:default:10000 assumed from the config (pretrain_base 10000 from " \
           "rope_theta, train_len 128 from max_position_embeddings, tune_len 128 from train_len)" in err
    before = records(out)
    assert main(["run", "--model", str(tiny_llama), "--corpus", str(text_corpus), "--out", str(out),
                 "--no-progress", "--lengths", "32,64", "--samples", "1", "--pretrain-base", "500",
                 "--tune-len", "256"]) == 0
    console = capsys.readouterr()
    assert "0 cells run now, 2 already recorded" in console.out and "assumed" in console.err  # train_len
    assert records(out) == before  # nothing computed or written again
    summary = pd.read_csv(out / "report" / "summary.csv").iloc[0]
    assert (summary["pretrain_base"], summary["tune_len"], summary["train_len"]) == (500.0, 256, 128)
    assert summary["law_inputs_from"] == ("pretrain_base: flag; train_len: assumed from the config "
                                          "(max_position_embeddings): check; tune_len: flag")


def test_a_corpus_whose_text_changed_under_the_same_path_is_refused(tiny_llama, text_corpus, tmp_path,
                                                                     capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(text_corpus.read_text())
    assert run(tiny_llama, corpus, tmp_path / "r") == 0
    corpus.write_text(text_corpus.read_text().upper())
    assert run(tiny_llama, corpus, tmp_path / "r") == 2
    assert "corpus text differs: sample 0" in capsys.readouterr().err


def test_the_same_experiment_resumes_and_adds_samples(tiny_llama, text_corpus, tmp_path):
    out = tmp_path / "r"
    assert run(tiny_llama, text_corpus, out) == 0
    assert run(tiny_llama, text_corpus, out, "--samples", "3") == 0  # more samples: the same experiment
    assert len(records(out)) == 6 and len({r["cell_key"] for r in records(out)}) == 6


def test_failed_cells_heal_and_the_exit_code_counts_the_grid(tiny_llama, text_corpus, tmp_path, monkeypatch,
                                                              capsys):
    from harness.engine import engine

    out = tmp_path / "r"
    real = engine.Engine.token_nll_batch
    calls = []

    def second_pass_fails(self, ids, plan=None):  # one pass per sample: the second is sample 1's
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure")
        return real(self, ids, plan)

    monkeypatch.setattr(engine.Engine, "token_nll_batch", second_pass_fails)
    assert run(tiny_llama, text_corpus, out, "--samples", "3") == 1
    assert {(r["sample"], r["status"]) for r in records(out)} == {(0, "ok"), (1, "error"), (2, "ok")}
    monkeypatch.setattr(engine.Engine, "token_nll_batch", real)
    capsys.readouterr()
    assert run(tiny_llama, text_corpus, out, "--samples", "3") == 0  # healed: only sample 1 ran again
    printed = capsys.readouterr().out
    assert ("2 cells run now, 4 already recorded, 0 failed in total (2 run again after an earlier failure)"
            in printed)
    rows = records(out)
    assert len(rows) == 8 and [(r["sample"], r["status"]) for r in rows[-2:]] == [(1, "ok"), (1, "ok")]
    last = latest_records(out)
    assert len(last) == 6 and {r["status"] for r in last.values()} == {"ok"}
    assert {key for key, r in Store(out).latest().items() if r["status"] == "ok"} == set(last)
    assert run(tiny_llama, text_corpus, out, "--samples", "3") == 0 and len(records(out)) == 8  # nothing left


def test_exit_1_while_any_cell_of_the_grid_has_no_ok_record(tiny_llama, text_corpus, tmp_path, monkeypatch):
    from harness.engine import engine

    out = tmp_path / "r"
    monkeypatch.setattr(engine.Engine, "token_nll_batch", lambda self, ids, plan=None: (_ for _ in ()).throw(
        torch.OutOfMemoryError("out of memory (simulated)")))
    assert run(tiny_llama, text_corpus, out) == 1
    assert run(tiny_llama, text_corpus, out) == 1  # retried, failed again: still 1, records appended
    assert len(records(out)) == 4 and len(latest_records(out)) == 2


def test_the_last_record_of_a_cell_wins_across_shards_and_in_the_console_table(tmp_path):
    """A cell healed by a later run on another world size: its ok record lives in an earlier-sorting shard."""
    from harness.report.load import load_runs
    from harness.run.runner import folder_summary

    base = {"setting": "s", "task": "perplexity", "length": 64, "depth": None, "seed": 0, "rope_hash": "h"}
    old = [{**base, "sample": 0, "cell_key": "a", "status": "ok", "nll": 1.0, "recorded_at": 100.0},
           {**base, "sample": 1, "cell_key": "b", "status": "error", "nll": None, "recorded_at": 100.0}]
    new = [{**base, "sample": 0, "cell_key": "a", "status": "ok", "nll": 3.0, "recorded_at": 200.0},
           {**base, "sample": 1, "cell_key": "b", "status": "ok", "nll": 2.0, "recorded_at": 200.0}]
    (tmp_path / "records.rank1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in new))
    last = latest_records(tmp_path)
    assert {k: r["nll"] for k, r in last.items()} == {"a": 3.0, "b": 2.0}
    assert {key for key, r in Store(tmp_path).latest().items() if r["status"] == "ok"} == {"a", "b"}
    (row,) = [r for r in folder_summary(tmp_path) if r["metric"] == "ppl"]
    assert (row["ok"], row["failed"]) == (2, 0)
    # exp(mean of 3 and 2), not of 1, 3, 2
    assert row["value"] == pytest.approx(float(torch.tensor(2.5).exp()))
    report = load_runs([tmp_path]).records  # the report aggregates the same records
    assert sorted(report["nll"]) == [2.0, 3.0]


def test_a_flags_run_renders_its_report_and_names_folder_and_report(tiny_llama, text_corpus, tmp_path,
                                                                    capsys):
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny_llama), "--corpus", str(text_corpus), "--out", str(out),
                 "--no-progress", "--lengths", "32,64", "--samples", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    at = lines.index(f"run folder: {out}")
    assert lines[at + 1].startswith(f"report: {out / 'report' / 'report.html'}")
    assert (out / "report" / "report.html").is_file() and (out / "report" / "summary.csv").is_file()
    # the console ends with the answer (the report's headline), not the per-length table (that needs -v)
    assert lines[at + 3].startswith("What was measured") and lines[at + 4] == "perplexity:"
    # a random-weight model: its loss is above a uniform guess's, so no length is claimed for it
    assert lines[-1].startswith("  ") and "no measured length: broken at the reference lengths" in lines[-1]
    assert not any(line.startswith("setting ") for line in lines)
    # `report --factor 2 RUN` read the run folder as a factor (nargs='+'): factors are comma lists or repeated
    assert main(["report", "--factor", "2", "--delta", "0.5,1", str(out), "--out", str(tmp_path / "rep"),
                 "--bootstrap", "0"]) == 0
    summary = (tmp_path / "rep" / "summary.csv").read_text()
    assert ",2.0," in summary and ",1.0," in summary


def test_no_report_says_how_to_render_it(tiny_llama, text_corpus, tmp_path, capsys):
    assert run(tiny_llama, text_corpus, tmp_path / "r") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"report: not rendered (--no-report): rope-harness report {tmp_path / 'r'}"
    assert not (tmp_path / "r" / "report").exists()


@pytest.mark.parametrize("argv, factors, deltas", [
    (["--factor", "2", "RUN"], [2.0], None),
    (["--factor", "1.5,2", "RUN"], [1.5, 2.0], None),
    (["--factor", "1.5", "--factor", "2", "RUN", "--delta", "0.5"], [1.5, 2.0], [0.5]),
    (["RUN", "OTHER", "--delta", "0.5,1"], None, [0.5, 1.0]),
])
def test_report_factor_and_delta_are_comma_lists_or_repeated(argv, factors, deltas):
    args = build_parser().parse_args(["report", *argv])
    assert args.factor == factors and args.delta == deltas and Path("RUN") in args.run_dirs


def test_report_with_the_old_space_separated_factors_names_the_fix(tmp_path, capsys):
    assert main(["report", "--factor", "1.5", "2", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "looks like a number" in err and "--factor 1.5,2" in err and err.count("\n") == 1


def test_a_folder_of_another_format_is_refused_before_anything_is_written(tiny_llama, text_corpus, tmp_path,
                                                                           capsys):
    out = tmp_path / "r"
    out.mkdir()
    old = json.dumps({"task_name": "perplexity", "label": "x", "L": 32, "state": "ok", "ppl": 9.0}) + "\n"
    (out / "records.jsonl").write_text(old)
    assert run(tiny_llama, text_corpus, out) == 2
    err = capsys.readouterr().err
    assert "holds records without task, setting, length, status" in err and "pass another --out" in err
    assert (out / "records.jsonl").read_text() == old and sorted(p.name for p in out.iterdir()) == [
        "records.jsonl"]


def test_records_another_run_wrote_after_planning_are_read_before_scoring(tiny_llama, text_corpus, tmp_path,
                                                                          monkeypatch, capsys):
    """The plan reads the folder once; if it changed before the run opens it (another run finished cells in
    between), the run reads it again and skips those cells instead of scoring them twice."""
    from harness.run import runner

    out = tmp_path / "r"
    assert run(tiny_llama, text_corpus, out, "--samples", "2") == 0
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    late = [line for line in lines if json.loads(line)["sample"] == 1]
    (out / "records.jsonl").write_text("".join(line for line in lines if line not in late))
    real_run = runner.run

    def another_run_finishes_first(plan, options, warn):
        with open(out / "records.jsonl", "a") as handle:
            handle.write("".join(late))
        return real_run(plan, options, warn)

    monkeypatch.setattr(runner, "run", another_run_finishes_first)
    capsys.readouterr()
    assert run(tiny_llama, text_corpus, out, "--samples", "2") == 0
    assert "0 cells run now, 4 already recorded" in capsys.readouterr().out
    assert len(records(out)) == len(lines)
