"""RULER's config names through `rope-harness run` on a zoo model: ok records with RULER's scores, and bad
input refused with one line, exit 2, nothing written."""

from __future__ import annotations

import json

from harness.cli import main


def records(folder) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("records*.jsonl")) for line in path.open()]


def test_run_niah_and_vt_on_a_zoo_model_writes_ok_records_with_rulers_scores(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--model", "zoo:base-1e6", "--tasks", "niah_single_1,vt", "--lengths", "512",
                 "--samples", "1", "--no-progress", "--no-report", "--out", str(out),
                 "--max-new-tokens", "6"])
    assert code == 0, capsys.readouterr().err
    rows = records(out)
    assert sorted(r["task"] for r in rows) == ["niah_single_1", "vt"]
    for row in rows:
        assert row["status"] == "ok" and row["length"] == 512 and row["prompt_tokens"] == 512
        assert 0.0 <= row["score"] <= 1.0 and row["scorer"] == "all" and row["chance_score"] == 0.0
        assert row["answer_logprob"] < 0 and row["answer_rank"] >= 1 and row["chance_logprob"] < 0
        assert row["generated_tokens"] <= 6 and isinstance(row["prediction"], str)
    niah_row = next(r for r in rows if r["task"] == "niah_single_1")
    assert json.loads(niah_row["task_identity"])["haystack"] == "noise"
    assert next(r for r in rows if r["task"] == "vt")["references"] == 5  # 1 chain, 4 hops


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here. Not a haystack.")
    cases = [
        (["--tasks", "niah_single_1", "--lengths", "64"], "fixed parts"),
        (["--tasks", "vt", "--lengths", "600", "--num-fewshot", "1"], "--num-fewshot 0"),
        (["--tasks", "niah_single_2", "--lengths", "2000", "--haystack", str(short)], "haystack has"),
        (["--tasks", "niah_single_9", "--lengths", "512"], "unknown task"),
        (["--tasks", "fwe", "--lengths", "512", "--alpha", "0.5"], "--alpha"),
    ]
    for extra, words in cases:
        out = tmp_path / "never"
        code = main(["run", "--model", "zoo:base-1e6", "--samples", "1", "--no-progress", "--no-report",
                     "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and words in err and len(err.splitlines()) == 1, (extra, err)
        assert not out.exists()
