"""Corpus/sample semantics (DESIGN.md) and suite validation."""

import argparse
import json
import sysconfig
from pathlib import Path

import pytest

from harness import corpus, suite
from harness.bytetok import byte_tokenizer
from harness.errors import InputError


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_text_file_is_read_verbatim(tmp_path, tok):
    path = tmp_path / "a.txt"
    path.write_bytes(b"  line one\r\nline two  \n\n")
    (doc_id, text), = corpus.iter_documents(str(path))
    assert text == "  line one\r\nline two  \n\n"  # no strip, no newline translation


def test_samples_walk_documents_in_order_with_bos_offset(tmp_path, tok):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "b.txt").write_text("B" * 25)
    (folder / "a.txt").write_text("".join(chr(65 + i % 26) for i in range(31)))
    (folder / "c.txt").write_text("tiny")
    samples = corpus.make_samples(tok, str(folder), max_length=11, count=10, bos=True)
    # a.txt: 31 tokens -> 3 samples of 10; b.txt: 25 -> 2; c.txt too short
    assert [(s.doc_id, s.offset) for s in samples] == [("a.txt", 0), ("a.txt", 10), ("a.txt", 20), ("b.txt", 0), ("b.txt", 10)]
    assert all(len(s.tokens) == 10 for s in samples)
    no_bos = corpus.make_samples(tok, str(folder), max_length=11, count=2, bos=False)
    assert [(s.offset, len(s.tokens)) for s in no_bos] == [(0, 11), (11, 11)]


def test_jsonl_field_and_errors(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "x" * 20, "body": "y" * 20}) + "\n")
    assert corpus.make_samples(tok, str(path), 11, 1, True)[0].tokens == tok("x" * 10, add_special_tokens=False)["input_ids"]
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
    (data / "test.jsonl").write_text("".join(json.dumps({"content": f"doc{i} " * 10}) + "\n" for i in range(50)))
    samples = corpus.make_samples(tok, "hf:json::test:content".replace("json", str(data)), 21, 2, True)
    assert [s.offset for s in samples] == [0, 20] and samples[0].doc_id.endswith(":0")


def test_hf_corpus_offline_is_a_clear_error(offline, tok):
    with pytest.raises(InputError, match="cannot stream dataset"):
        corpus.make_samples(tok, "hf:no-such-owner/no-such-dataset-xyz", 64, 1, True)


ARGS = argparse.Namespace(out=None, chunk_size=None, max_memory=None, dry_run=False, no_progress=True, argv=[],
                          dtype=None, device=None)


def test_packaged_suites_parse():
    assert {"paper", "compare-scaling"} <= set(suite.packaged_suites())
    for name in suite.packaged_suites():
        loaded = suite.load_suite(name, ARGS)
        assert loaded.settings and loaded.tasks


@pytest.mark.parametrize("body, message", [
    ('[[settings]]\nmodel = "m"\nrope_thta = 5\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n', r":3: unknown key 'rope_thta'"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlenghts = [8]\n', r":5: unknown key 'lenghts'"),
    ('[run]\nouts = "x"\n[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n', r":2: unknown key 'outs'"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "perplexity"\n', "has no lengths"),
    ('[[tasks]]\nname = "perplexity"\nlengths = [8]\n', "no \\[\\[settings\\]\\]"),
    ('[[settings]]\nmodel = "m"\nrope_theta = "big"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\n', ":3: rope_theta must be float"),
    ('[[settings]]\nmodel = "m"\n[[tasks]]\nname = "nope"\nlengths = [8]\n', "unknown task"),
    ('[[settings]\n', "invalid TOML"),
    ('[[settings]]\nmodel = "m"\nlabel = "a"\n[[tasks]]\nname = "perplexity"\nlengths = [8]\nsettings = ["b"]\n',
     ":7: task perplexity settings must list labels"),
])
def test_suite_validation_names_key_and_line(body, message, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(body)
    with pytest.raises(InputError, match=message):
        suite.load_suite(str(path), ARGS)


def test_unknown_suite_name():
    with pytest.raises(InputError, match="unknown suite"):
        suite.load_suite("nonexistent-suite", ARGS)
