"""Corpus/sample semantics (docs/design.md) and suite validation."""

import dataclasses
import json
import sysconfig
from pathlib import Path

import pytest

from harness.core.errors import InputError
from harness.data import corpus
from harness.model.bytetok import byte_tokenizer
from harness.run import suite


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_text_file_is_read_verbatim(tmp_path, tok):
    path = tmp_path / "a.txt"
    path.write_bytes(b"  line one\r\nline two  \n\n")
    (doc_id, text), = corpus.iter_documents(str(path))
    assert text == "  line one\r\nline two  \n\n"  # no strip, no newline translation


def test_book_is_one_long_document_cut_into_consecutive_samples(tok):
    (doc_id, text), = corpus.iter_documents("book")
    assert doc_id.startswith("Pride and Prejudice")
    assert text.startswith("It is a truth universally acknowledged")
    first, second = corpus.make_samples(tok, "book", 200_001, 2, bos=True)
    assert (first.offset, second.offset) == (0, 200_000)  # one document: windows follow each other
    assert first.tokens + second.tokens == tok(text, add_special_tokens=False)["input_ids"][:400_000]


def test_samples_walk_documents_in_order_with_bos_offset(tmp_path, tok):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("B" * 25)
    (folder / "a.txt").write_text("".join(chr(65 + i % 26) for i in range(31)))
    (folder / "c.txt").write_text("tiny")
    samples = corpus.make_samples(tok, str(folder), max_length=11, count=10, bos=True)
    # a.txt: 31 tokens -> 3 samples of 10; b.txt: 25 -> 2; c.txt too short
    assert [(s.doc_id, s.offset) for s in samples] == [("a.txt", 0), ("a.txt", 10), ("a.txt", 20),
                                                       ("b.txt", 0), ("b.txt", 10)]
    assert all(len(s.tokens) == 10 for s in samples)
    no_bos = corpus.make_samples(tok, str(folder), max_length=11, count=2, bos=False)
    assert [(s.offset, len(s.tokens)) for s in no_bos] == [(0, 11), (11, 11)]


def test_jsonl_field_and_errors(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "x" * 20, "body": "y" * 20}) + "\n")
    assert (corpus.make_samples(tok, str(path), 11, 1, True)[0].tokens
            == tok("x" * 10, add_special_tokens=False)["input_ids"])
    assert corpus.make_samples(tok, f"{path}:body", 11, 1, True)[0].tokens[0] == ord("y")
    with pytest.raises(InputError, match="no field 'nope'"):
        corpus.make_samples(tok, f"{path}:nope", 11, 1, True)
    with pytest.raises(InputError, match="reaches 500 tokens"):
        corpus.make_samples(tok, str(path), 500, 1, True)
    with pytest.raises(InputError, match="does not exist"):
        list(corpus.iter_documents(str(tmp_path / "missing.txt")))


def test_stdlib_split_is_deterministic_and_disjoint():
    evaluation, train = corpus.stdlib_files("eval"), corpus.stdlib_files("train")
    assert evaluation and train and not set(evaluation) & set(train)
    assert len(evaluation) < len(train) / 5
    root = Path(sysconfig.get_paths()["stdlib"])
    relative = [p.relative_to(root).as_posix() for p in evaluation]
    assert relative == sorted(relative)
    assert all(corpus.is_eval_file(r) for r in relative)
    assert not any(corpus.is_eval_file(p.relative_to(root).as_posix()) for p in train)
    assert all(p.suffix == ".py" and "test" not in p.parts for p in evaluation)


def test_hf_corpus_streams_a_local_dataset(tmp_path, tok):
    data = tmp_path / "ds"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps({"content": f"doc{i} " * 10}) + "\n"
                                             for i in range(50)))
    samples = corpus.make_samples(tok, "hf:json::test:content".replace("json", str(data)), 21, 2, True)
    assert [s.offset for s in samples] == [0, 20] and samples[0].doc_id.endswith(":0")


def test_hf_corpus_offline_is_a_clear_error(offline, tok):
    with pytest.raises(InputError, match="cannot stream dataset"):
        corpus.make_samples(tok, "hf:no-such-owner/no-such-dataset-xyz", 64, 1, True)


ARGS = suite.Flags(no_progress=True)


def test_hf_corpus_with_no_route_to_the_hub_uses_the_cache_at_once(tok, monkeypatch):
    """No DNS for the hub: datasets is put in cache-only mode before its first request (no retries)."""
    import socket

    import datasets.config
    import huggingface_hub.constants

    def no_dns(*args, **kwargs):
        raise socket.gaierror("Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(InputError, match="cannot stream dataset"):
        corpus.make_samples(tok, "hf:no-such-owner/no-such-dataset-xyz", 64, 1, True)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True


def test_packaged_suites_are_the_documented_ones_and_each_parses_and_resolves():
    """The README's list of packaged suites is the package's; each parses, every task runs on some setting
    and every setting runs some task, and every model that is not a hub id resolves to a local file."""
    import importlib.util
    import re

    from harness.model import models
    from harness.model.checkpoints import PACKAGED
    from harness.run.run_plan import is_hub_id

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    documented = re.search(r"packaged: ([\w, -]+)\n", readme)[1].split(", ")
    assert sorted(documented) == suite.packaged_suites()
    for name in suite.packaged_suites():
        loaded = suite.load_suite(name, ARGS)
        labels = [s.label for s in loaded.settings]
        assert all(any(t.applies_to(label) for label in labels) for t in loaded.tasks), name
        assert all(any(t.applies_to(label) for t in loaded.tasks) for label in labels), name
        for setting in loaded.settings:
            package = PACKAGED.get(setting.model)
            if is_hub_id(setting.model) or (package and importlib.util.find_spec(package.package) is None):
                continue
            assert Path(models.resolve_model_path(setting.model)).exists(), (name, setting.model)


@pytest.mark.parametrize("body, message", [
    ('[[settings]]\nmodel = "m"\nrope_thta = 5\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     r":3: unknown key 'rope_thta'"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlenghts = [8]\n',
     r":5: unknown key 'lenghts'"),
    ('[run]\nouts = "x"\n[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     r":2: unknown key 'outs'"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\n', "has no lengths"),
    ('[[tasks]]\nname = "perplexity"\nlengths = [8]\n', "no \\[\\[settings\\]\\]"),
    ('[[settings]]\nmodel = "m"\nrope_theta = "big"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     ":3: rope_theta must be float"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "nope"\nlengths = [8]\n', "unknown task"),
    ('[[settings]\n', "invalid TOML"),
    ('[[settings]]\nmodel = "m"\nlabel = "a"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n'
     'settings = ["b"]\n',
     ":7: task perplexity settings must list labels"),
    # wrong types are named with their line, never coerced (bool("false") is True) nor a traceback
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\nbos = "false"\n',
     ":6: bos must be bool"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\nsamples = 1.7\n',
     ":6: samples must be int"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\nseed = "x"\n',
     ":6: seed must be int"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = 8\n',
     ":5: lengths must be a list"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = 3\nlengths = [8]\n', ":4: name must be str"),
    ('[[settings]]\nmodel = 5\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n', ":2: model must be str"),
    ('[[settings]]\nmodel = "m"\nlabel = 5\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     ":3: label must be str"),
    ('[[settings]]\nmodel = "m"\nrope_params = "a=1"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     ":3: rope_params must be a table"),
    ('[[settings]]\nmodel = "m"\nrope_theta = inf\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     ":3: rope_theta must be a finite number"),
    ('[run]\nchunk_size = "8"\n[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     ":2: chunk_size must be int"),
    ('[run]\nreport = "no"\n[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     ":2: report must be bool"),
    ('[run]\nout = 5\n[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     ":2: out must be str"),
    ('run = 5\n[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     ":1: run must be a table"),
    ('[settings]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n',
     ":1: settings must be an array of tables"),
    ('[[settings]]\nmodel = "m"\n[tasks]\nname = "perplexity"\nlengths = [8]\n',
     ":3: tasks must be an array of tables"),
    # the line of the entry that holds the bad value, not the first line with that key
    ('[[settings]]\nmodel = "m"\nrope_theta = 1e4\n[[settings]]\nmodel = "m"\nrope_theta = "x"\n[[tasks]]\n'
     'name = "perplexity"\nlengths = [8]\n', ":6: rope_theta must be float"),
    ('[[settings]]\nmodel = "m"\nlabel = "a"\n[[settings]]\nmodel = "n"\nlabel = "a"\n[[tasks]]\n'
     'name = "perplexity"\nlengths = [8]\n', "label 'a' is given to several"),
])
def test_suite_validation_names_key_and_line(body, message, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(body)
    with pytest.raises(InputError, match=message):
        suite.load_suite(str(path), ARGS)


def test_unknown_suite_name():
    with pytest.raises(InputError, match="unknown suite"):
        suite.load_suite("nonexistent-suite", ARGS)


def test_suite_path_that_is_a_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        suite.load_suite(str(tmp_path), ARGS)


def test_suite_takes_attn_from_the_command_line():
    args = dataclasses.replace(ARGS, setting={"attn": "eager"})
    assert {s.attn for s in suite.load_suite("quick", args).settings} == {"eager"}


@pytest.mark.parametrize("line, message", [
    ('["a list"]', ":1 is not a JSON object"),
    ('{"text": null}', ":1: field 'text' is NoneType, not text"),  # never the document "None"
    ('{"text": 5}', ":1: field 'text' is int, not text"),
])
def test_jsonl_rows_that_are_not_text(line, message, tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InputError, match=message):
        corpus.make_samples(tok, str(path), 11, 1, True)


def test_jsonl_line_that_is_not_utf8(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * 20 + b'"}\n\xff\xfe\n')
    with pytest.raises(InputError, match=":2 is not valid JSON \\(not UTF-8\\)"):
        corpus.make_samples(tok, str(path), 11, 5, True)


# ---- `rope-harness run` flags: bad input is one line on stderr, exit 2, nothing written ----


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    from harness.cli import main

    code = main(["run", *argv])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("extra, message", [
    (["--samples", "0"], "--samples must be >= 1 (got 0)"),  # was silently the default 4
    (["--lengths", "32.5"], "not a comma list of integers"),  # was silently 32
    (["--lengths", "inf"], "not a comma list of integers"),  # was an OverflowError traceback
    (["--rope-theta", "inf"], "--rope-theta: 'inf' is not a finite number"),
    (["--rope-factor", "nan"], "--rope-factor: 'nan' is not a finite number"),
    (["--pretrain-base", "nan"], "--pretrain-base: 'nan' is not a finite number"),
    (["--rope-param", "=3"], "is not KEY=VALUE"),
    (["--rope-type", "yarn", "--rope-factor", "2", "--rope-param", "beta_fast=abc"],
     "must be a number, a JSON list"),
    (["--max-memory", "0"], "not a positive size"),
    (["--max-memory", "1e400"], "not a positive size"),  # was an OverflowError traceback
    (["--max-memory", "1.5.5G"], "not a positive size"),  # was a ValueError traceback
    (["--max-memory", "24"], "24 bytes, less than 1 MiB: give the unit, e.g. 24GiB"),  # hung under the cap
    (["--device", "bogus"], "unknown --device 'bogus'"),
    # argparse, one line
    (["--samples", "x"], "argument --samples: invalid int value: 'x' (see rope-harness run --help)"),
    # was the default depths
    (["--task", "passkey", "--depths", ""], "--depths '' is not a comma list of numbers"),
])
def test_run_flag_errors_are_one_line(extra, message, tiny_llama, text_corpus, tmp_path, capsys):
    base = ["--model", str(tiny_llama), "--corpus", str(text_corpus), "--lengths", "32", "--samples", "1",
            "--no-progress", "--out", str(tmp_path / "r")]
    code, err = run_cli([*base, *extra], capsys)
    assert code == 2 and message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, value", [("--depths", "0.5"), ("--source", "x.jsonl")])
def test_a_task_option_the_task_lacks_names_the_tasks_that_take_it(flag, value, tiny_llama, text_corpus,
                                                                   tmp_path, capsys):
    from tasks.base import get_task, task_names

    option = flag.removeprefix("--")
    owners = [name for name in task_names() if option in get_task(name).option_names()]
    assert owners and "perplexity" not in owners
    code, err = run_cli(["--model", str(tiny_llama), "--corpus", str(text_corpus), "--lengths", "32",
                         "--samples", "1", "--no-progress", "--out", str(tmp_path / "r"), flag, value],
                        capsys)
    assert code == 2 and f"{flag} applies to --task " in err and "not perplexity" in err and "\n" not in err
    assert all(owner in err for owner in owners)
    assert not (tmp_path / "r").exists()


def test_run_device_without_cuda_is_bad_input(tiny_llama, text_corpus, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = run_cli(["--model", str(tiny_llama), "--corpus", str(text_corpus), "--lengths", "32",
                         "--device", "cuda:1", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "no CUDA device on this machine" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("out", ["file", "file/sub"])
def test_run_out_that_cannot_be_a_folder(out, tiny_llama, text_corpus, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = run_cli(["--model", str(tiny_llama), "--corpus", str(text_corpus), "--lengths", "32",
                         "--no-progress", "--out", str(tmp_path / out)], capsys)
    assert code == 2 and "is a file, not a folder" in err and (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "64", "--samples", "1"], "--lengths, --samples need --model"),  # ran the whole quick suite
    (["quick", "--lengths", "64"], "--lengths cannot be combined with suite 'quick'"),
    (["quick", "--model", "zoo:base-1e4"], "--model cannot be combined with suite 'quick'"),
])
def test_run_flags_a_suite_would_ignore(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli([*argv, "--dry-run"], capsys)
    assert code == 2 and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


# ---- lm-eval habits: k lengths, several tasks, safe folder names; dry runs offline ----


def test_lengths_take_k_suffixes_in_flags_and_suites(tmp_path):
    from harness.core.values import parse_lengths

    assert parse_lengths("4k,32K,1.5k,1000") == [1000, 1536, 4096, 32768]
    for bad in ("0.1k", "4kk", "4m", "k"):
        with pytest.raises(InputError, match="not a comma list of integers"):
            parse_lengths(bad)
    path = tmp_path / "s.toml"
    path.write_text('[[settings]]\nmodel = "m"\ntune_len = "8k"\n[[tasks]]\nname = "perplexity"\n'
                    'lengths = ["4k", 1024, "32K"]\n')
    loaded = suite.load_suite(str(path), ARGS)
    assert (loaded.tasks[0].params.lengths == (1024, 4096, 32768)
            and loaded.settings[0].override.tune_len == 8192)
    path.write_text('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = ["4x"]\n')
    with pytest.raises(InputError, match=r':5: lengths must be an integer or a length such as "4k"'):
        suite.load_suite(str(path), ARGS)


def test_tasks_flag_runs_several_tasks_with_their_own_options():
    flags = suite.Flags(setting={"model": "zoo:base-1e4"}, task="perplexity, passkey",
                        params={"lengths": [1024, 2048]},
                        task_options={"depths": "0,1", "sliding_stride": None})
    loaded = suite.from_flags(flags)
    assert [t.name for t in loaded.tasks] == ["perplexity", "passkey"] and loaded.options.report
    assert loaded.tasks[0].params is not loaded.tasks[1].params
    assert (loaded.tasks[1].params.options["depths"] == [0.0, 1.0]
            and "depths" not in loaded.tasks[0].params.options)
    assert loaded.tasks[0].params.lengths == (1024, 2048)
    assert str(loaded.options.out) == "results/base-1e4-perplexity-passkey"
    with pytest.raises(InputError, match="unknown task 'nope'"):
        suite.from_flags(suite.Flags(setting={"model": "zoo:base-1e4"}, task="perplexity,nope",
                                     params={"lengths": [64]}))


@pytest.mark.parametrize("label, folder", [
    ("../../etc", "etc"), ("..", "run"), (".hidden", "hidden"), ("b=1e6 tuned@1024", "b_1e6_tuned_1024"),
    ("llama:default:10000", "llama_default_10000"), ("-rf", "rf"), ("a/../b", "a_.._b"),
])
def test_labels_become_one_safe_folder_under_results(label, folder):
    loaded = suite.from_flags(suite.Flags(setting={"model": "zoo:base-1e4", "label": label},
                                          params={"lengths": [64]}))
    assert loaded.options.out == Path("results") / folder
    assert loaded.settings[0].label == label  # the label itself is kept as given


def test_run_with_several_tasks_and_k_lengths_dry_run(tiny_llama, tmp_path, capsys):
    code = main_run(["--model", str(tiny_llama), "--tasks", "perplexity,passkey", "--lengths", "1k",
                     "--depths", "0.5", "--samples", "1", "--dry-run", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "2 cells (0 already recorded" in out
    assert {line.split()[1] for line in out.splitlines() if line.startswith(f"{tiny_llama.name}:")} >= \
        {"perplexity", "passkey"}


def main_run(argv):
    from harness.cli import main

    return main(["run", *argv])


def test_paper_dry_run_offline_lists_cells_without_estimates(offline, tmp_path, monkeypatch, capsys):
    """A hub model that is not in the local cache, and an hf: corpus: listed and marked, exit 0."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.toml"
    path.write_text('[[settings]]\nmodel = "no-such-owner/no-such-model-xyz"\nlabel = "hub:base"\n'
                    '[[tasks]]\nname = "perplexity"\ncorpus = "hf:no-such-owner/ds::test:text"\n'
                    'lengths = ["4k", "8k"]\n'
                    'samples = 2\n')
    assert main_run([str(path), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "hub:base" in captured.out and "no estimate (config not read)" in captured.out
    assert "4 cells (0 already recorded" in captured.out
    assert "config of 'no-such-owner/no-such-model-xyz' not available offline" in captured.err
    assert list(tmp_path.iterdir()) == [path]  # nothing written
    assert main_run(["paper", "--dry-run"]) == 0 and main_run(["compare-scaling", "--dry-run"]) == 0
    assert main_run([str(path)]) == 2  # a real run still needs the config


def test_dry_run_reads_a_hub_config_from_the_local_cache(offline, tiny_llama, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--owner--tiny" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((tiny_llama / "config.json").read_text())
    (tmp_path / "hub" / "models--owner--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--tiny" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.toml"
    path.write_text('[[settings]]\nmodel = "owner/tiny"\nlabel = "t"\n[[tasks]]\nname = "perplexity"\n'
                    'corpus = "hf:owner/ds"\nlengths = [1024, 4096]\nsamples = 1\n')
    assert main_run([str(path), "--dry-run"]) == 0
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if line.startswith("t "))
    assert "at 4096 (single)" in row and "MiB" in row
    assert "tokenizer of 'owner/tiny' not available offline" in captured.err


def test_gzip_corpora_read_transparently_and_binary_is_refused(tmp_path):
    import gzip

    from harness.data.corpus import iter_documents

    text = "def f(x):\n    return x + 1\n" * 50
    (tmp_path / "code.txt.gz").write_bytes(gzip.compress(text.encode()))
    assert list(iter_documents(str(tmp_path / "code.txt.gz"))) == [("code.txt.gz", text)]
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(InputError, match=r"blob.bin is binary, not UTF-8 text: pass text files"):
        list(iter_documents(str(tmp_path / "blob.bin")))
    (tmp_path / "fake.gz").write_text(text)
    with pytest.raises(InputError, match=r"fake.gz is not gzip data"):
        list(iter_documents(str(tmp_path / "fake.gz")))
    # a few bad bytes in real text are replaced (U+FFFD), the document kept
    (tmp_path / "mostly.txt").write_bytes(text.encode() + b"\xff\xfe")
    assert list(iter_documents(str(tmp_path / "mostly.txt")))[0][1].endswith("\ufffd\ufffd")


def test_memory_sizes_read_as_accelerate_reads_them():
    from harness.core.values import parse_size

    assert parse_size("1GiB") == parse_size("1G") == 1 << 30 and parse_size("1GB") == 10**9
    assert parse_size("500MB") == 500 * 10**6 and parse_size("500MiB") == 500 << 20
    with pytest.raises(InputError, match="less than 1 MiB"):
        parse_size("1KB")


def test_labels_in_any_script_get_their_own_folder():
    from harness.core.values import safe_name

    assert safe_name("b=1e6 tuned@1024") == "b_1e6_tuned_1024" and safe_name("../x") == "x"
    assert safe_name("长上下文") == "长上下文" and safe_name("ü-model") == "ü-model"
    rocket, fire = safe_name("🚀"), safe_name("🔥")
    assert rocket != fire and rocket.startswith("run_") and safe_name("🚀") == rocket  # distinct, stable
