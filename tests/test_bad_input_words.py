"""Bad input told in the right words (issue 35, item 6): one line naming what is wrong and the fix, exit 2,
nothing written. Each case here once got a message about something else: a folder without a tokenizer
blamed sentencepiece, a truncated GGUF file said "cannot reshape array", `--lengths -128` said it was not
an integer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_gguf import llama_writer, write_llama_tensors

from harness.cli import main
from harness.core.errors import InputError
from harness.model import gguf as hgguf
from harness.model import models
from harness.model.zoo_models import resolve as resolve_zoo


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(["run", *argv])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    assert err.startswith("rope-harness: error: ") and err.count("\n") == 1, err
    return err.strip()


# ------------------------------------------------------------------------------------------- --lengths


@pytest.mark.parametrize("argv, bad", [
    (["--lengths=-128"], "--lengths -128: a length"),
    (["--lengths", "-128"], "--lengths -128: a length"),  # argparse takes it as the value, not a flag
    (["--lengths", "0"], "--lengths 0: a length"),
    (["--lengths", "1"], "--lengths 1: a length"),
    (["--lengths", "4k,-1"], "--lengths 4k,-1: -1 is not a length, a length"),
    (["--lengths", "4k,0,1"], "--lengths 4k,0,1: 0 and 1 are not lengths, a length"),
])
def test_a_length_below_two_is_named_as_too_small(argv, bad, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["--model", "zoo:base-1e4", *argv, "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2
    assert bad in line and "must be a whole number of tokens >= 2: use e.g. --lengths 1024,2048" in line
    assert "comma list" not in line  # -128 is an integer: that was never the problem
    assert not out.exists()


def test_lengths_that_are_no_numbers_keep_their_message():
    from harness.core.values import parse_lengths

    for bad in ("32.5", "inf", "-x", "4k,abc", ","):
        with pytest.raises(InputError, match="is not a comma list of integers"):
            parse_lengths(bad)
    assert parse_lengths("2,4k,1e3") == [2, 1000, 4096]


# ------------------------------------------------------------------------------ a folder without tokenizer


@pytest.fixture
def config_only(tmp_path) -> Path:
    """A model folder holding config.json alone: the tokenizer was never saved beside it."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(resolve_zoo("zoo:base-1e4") / "config.json", folder / "config.json")
    return folder


def test_a_folder_without_tokenizer_files_says_so(config_only, tmp_path, capsys, offline):
    out = tmp_path / "out"
    code, err = run_cli(["--model", str(config_only), "--lengths", "16", "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2
    assert f"model folder {config_only} has no tokenizer files (tokenizer.json, tokenizer.model" in line
    assert f"save the tokenizer beside the weights, e.g. tokenizer.save_pretrained('{config_only}')" in line
    assert "sentencepiece" not in line and "tiktoken" not in line
    assert not out.exists()


def test_load_tokenizer_refuses_the_folder_and_still_loads_a_whole_one(config_only, offline):
    with pytest.raises(InputError, match="has no tokenizer files"):
        models.load_tokenizer(str(config_only))
    shutil.copy(resolve_zoo("zoo:base-1e4") / "tokenizer.json", config_only / "tokenizer.json")
    shutil.copy(resolve_zoo("zoo:base-1e4") / "tokenizer_config.json", config_only / "tokenizer_config.json")
    assert models.load_tokenizer(str(config_only))("ab")["input_ids"]


# ----------------------------------------------------------------------------------- a truncated GGUF file


@pytest.fixture
def gguf_file(tmp_path, monkeypatch) -> Path:
    """The tiny Llama of tiny_gguf (F32 weights, a byte-level vocabulary), written whole."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "whole" / "tiny.gguf"
    path.parent.mkdir()
    tokens = [*bytes_to_unicode().values(), "<|endoftext|>"]
    writer = llama_writer(path, "tiny", 1e4)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_token_merges([])
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int, scale: float = 0.3, offset: float = 0.0) -> None:
        writer.add_tensor(name, (offset + scale * rng.standard_normal(shape)).astype(np.float32))

    write_llama_tensors(writer, len(tokens), tensor)
    return path


def cut(path: Path, keep: int) -> Path:
    short = path.parent.parent / "cut" / path.name
    short.parent.mkdir(exist_ok=True)
    short.write_bytes(path.read_bytes()[:keep])
    return short


def test_a_whole_gguf_file_is_not_truncated(gguf_file):
    assert hgguf.truncation(gguf_file) is None
    assert models.load_config(str(gguf_file)).model_type == "llama"


@pytest.mark.parametrize("where", ["header", "tensor data", "last bytes"])
def test_a_truncated_gguf_file_says_truncated(where, gguf_file):
    size = gguf_file.stat().st_size
    keep = {"header": 100, "tensor data": size // 2, "last bytes": size - 100}[where]
    short = cut(gguf_file, keep)
    needs = "its header needs at least" if where == "header" else f"its tensor table needs {size}"
    for read in (models.load_config, models.load_tokenizer, models.weights_source, hgguf.materialised):
        with pytest.raises(InputError) as err:
            read(str(short))
        line = str(err.value)
        assert line.startswith(f"GGUF file {short} is truncated ({keep} bytes, {needs}")
        assert line.endswith("): download or copy it again") and "\n" not in line
        assert "reshape" not in line
    assert not (hgguf.cache_root() / "gguf").exists() or not any((hgguf.cache_root() / "gguf").iterdir())


def test_the_dequantisation_says_truncated_where_the_cut_bites(gguf_file, monkeypatch):
    """The weights path on its own: transformers' GGUF loader meets the cut (no check of ours first)."""
    short = cut(gguf_file, gguf_file.stat().st_size - 100)
    real, calls = hgguf.truncation, []

    def first_finds_nothing(path):  # the check before dequantising; the loader's failure is then told
        calls.append(path)
        return None if len(calls) == 1 else real(path)

    monkeypatch.setattr(hgguf, "truncation", first_finds_nothing)
    with pytest.raises(InputError, match=r"is truncated \(\d+ bytes, its tensor table needs \d+\): download"):
        hgguf.materialised(short)
    assert len(calls) == 2


def test_a_truncated_gguf_through_the_cli(gguf_file, tmp_path, capsys):
    short = cut(gguf_file, gguf_file.stat().st_size // 3)
    out = tmp_path / "out"
    code, err = run_cli(["--model", str(short), "--lengths", "16", "--out", str(out)], capsys)
    line = one_error_line(err)
    assert code == 2
    assert f"GGUF file {short} is truncated" in line and "download or copy it again" in line
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_gguf_file_of_random_bytes_is_not_called_truncated(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(np.random.default_rng(3).bytes(4096))
    assert hgguf.truncation(bad) is None
    with pytest.raises(InputError, match="cannot read GGUF file"):
        models.load_config(str(bad))
