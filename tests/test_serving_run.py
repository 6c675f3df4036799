"""`rope-harness run --serve llama.cpp` end to end on a tiny GGUF: the engine launched with the RoPE setting
applied, records that say which engine served them, refusals before anything runs, no process left."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

from serving_helpers import gone, llama_server, write_gguf  # noqa: E402

from harness.cli import main  # noqa: E402
from harness.run.store import read_jsonl  # noqa: E402

ARGS = ["--task", "passkey", "--lengths", "400", "--depths", "0.5", "--samples", "1", "--no-progress",
        "--no-report"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))  # the probe dequantises


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served_run")
    return write_gguf(folder / "tiny.gguf", ascii_output=True)  # the probe pairs each token with its text


def test_passkey_through_a_launched_llama_cpp_server(tiny, tmp_path, monkeypatch):
    from harness.serving import process

    started = []
    real_start = process.Server.start

    def remember(self):
        out = real_start(self)
        started.append(self.pid)
        return out

    monkeypatch.setattr(process.Server, "start", remember)
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny), "--serve", "llama.cpp", "--rope-theta", "20000", "--out",
                 str(out), *ARGS]) == 0
    (row,) = list(read_jsonl(out, "records"))
    assert row["status"] == "ok" and row["plan"] == "served:llama.cpp" and row["engine"] == "llama.cpp"
    assert row["engine_version"] == "0.3.36" and row["rope_theta"] == 20000.0
    assert row["answer_logprob"] is None  # llama.cpp serves no prompt log-probs here: never guessed
    info = json.loads((out / "run.json").read_text())["settings"][row["setting"]]
    command = info["serve_command"]
    assert "--rope_freq_base 20000" in command and "llama_cpp.server" in command  # the setting, applied
    assert row["probe_verdict"] == "override applied" and row["probe_length"] == 400  # and checked
    assert 2 * row["probe_gap"] <= row["probe_gap_without_override"]
    assert started and all(gone(pid) for pid in started)  # the server stopped with the setting


def test_a_served_and_an_in_process_run_are_different_experiments(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny), "--serve", "llama.cpp", "--label", "x", "--out", str(out),
                 *ARGS]) == 0
    capsys.readouterr()
    assert main(["run", "--model", str(tiny), "--label", "x", "--out", str(out), *ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the engine differs: in-process vs the folder's llama.cpp" in err[0]


@pytest.mark.parametrize("extra, message", [
    (["--task", "perplexity", "--lengths", "64"], "perplexity needs every prompt token's log-prob"),
    (["--rope-type", "dynamic", "--rope-factor", "2", *ARGS], "llama.cpp cannot apply rope_type dynamic"),
    (["--tensor-parallel", "2", *ARGS], "llama.cpp cannot apply tensor_parallel 2"),
])
def test_what_llama_cpp_cannot_serve_is_refused_before_anything_runs(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny), "--serve", "llama.cpp", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_a_wrong_server_url_is_one_line_and_nothing_written(tiny, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny), "--server-url", "http://127.0.0.1:9", "--out", str(out),
                 *ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach --server-url http://127.0.0.1:9" in err[0]
    assert not out.exists()


def test_a_server_that_cannot_start_leaves_its_cells_as_errors(tiny, tmp_path, monkeypatch):
    from harness.serving import backend

    def broken(*args, **kwargs):
        raise RuntimeError("simulated: the engine exited before serving")

    monkeypatch.setattr(backend, "check_tokenizer", broken)
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny), "--serve", "llama.cpp", "--out", str(out), *ARGS]) == 1
    (row,) = list(read_jsonl(out, "records"))
    assert row["status"] == "error" and "llama.cpp server unavailable" in row["error"]
    assert "simulated" in row["error"]


def test_a_server_that_ignores_the_override_is_caught_by_the_probe(tiny, tmp_path):
    out = tmp_path / "r"
    with llama_server(tiny, tmp_path / "plain.log") as server:  # serves the checkpoint's own base, 1e4
        server.wait_ready(60)
        assert main(["run", "--model", str(tiny), "--server-url", server.url, "--rope-theta", "20000",
                     "--out", str(out), *ARGS]) == 1
    (row,) = list(read_jsonl(out, "records"))
    assert row["probe_verdict"] == "override NOT applied" and row["status"] == "error"
    assert "does not serve the asked setting" in row["error"] and "override NOT applied" in row["error"]
    assert row["probe_gap"] >= 2 * row["probe_gap_without_override"]


def test_no_probe_skips_the_in_process_model(tiny, tmp_path, monkeypatch):
    from harness.model import models

    def refuse(*args, **kwargs):
        raise AssertionError("--no-probe loads no in-process model")

    monkeypatch.setattr(models, "load", refuse)
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny), "--serve", "llama.cpp", "--no-probe", "--out", str(out),
                 *ARGS]) == 0
    (row,) = list(read_jsonl(out, "records"))
    assert row["status"] == "ok" and row["probe_verdict"] == "skipped: --no-probe"
    assert row["probe_gap"] is None


def test_the_dry_run_shows_the_launch_command_and_starts_nothing(tiny, tmp_path, capsys, monkeypatch):
    from harness.serving import process

    def refuse(self):
        raise AssertionError("a dry run starts no server")

    monkeypatch.setattr(process.Server, "start", refuse)
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny), "--serve", "llama.cpp", "--rope-theta", "20000", "--out",
                 str(out), "--dry-run", *ARGS]) == 0
    text = capsys.readouterr().out
    assert "served:llama.cpp" in text and "the engine owns its memory" in text
    assert "--rope_freq_base 20000" in text and "--port <free port>" in text
    assert "probes 400 tokens against the in-process model" in text
    assert not out.exists()


def test_a_server_with_other_weights_and_the_same_tokenizer_is_caught_by_the_probe(tiny, tmp_path):
    other = write_gguf(tmp_path / "other.gguf", ascii_output=True, seed=1)
    out = tmp_path / "r"
    with llama_server(other, tmp_path / "other.log") as server:
        server.wait_ready(60)
        assert main(["run", "--model", str(tiny), "--server-url", server.url, "--out", str(out), *ARGS]) == 1
    (row,) = list(read_jsonl(out, "records"))
    assert row["probe_verdict"] == "serves another model" and row["status"] == "error"
    assert row["probe_gap"] > 1.0 and row["probe_gap_without_override"] is None


def test_a_probe_that_cannot_run_is_recorded_and_the_cells_still_run(tiny, tmp_path, monkeypatch):
    from harness.serving import probe

    def broken(config, share=0.5):
        raise ValueError("simulated: this config builds no model here")

    monkeypatch.setattr(probe, "fits_in_memory", broken)
    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny), "--serve", "llama.cpp", "--out", str(out), *ARGS]) == 0
    (row,) = list(read_jsonl(out, "records"))
    assert row["status"] == "ok" and row["probe_verdict"].startswith("failed: ValueError: simulated")
