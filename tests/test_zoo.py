"""The zoo trains end to end in seconds, and its checkpoints load by name with the right law inputs."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from harness.core.errors import InputError
from harness.model.zoo import ZOO_DIR, Recipe, train_family
from harness.model.zoo_models import FAMILY, resolve, zoo_names


def _expected_theta_and_tune_len(name: str, recipe: Recipe) -> tuple[float, int]:
    spec = FAMILY[name]
    if spec is None:
        return recipe.pretrain_base, recipe.train_len
    base, mult = spec
    return base, recipe.tune_len_long if mult > 1 else recipe.train_len


def _check_checkpoint(path, name: str, recipe: Recipe) -> None:
    theta, tune_len = _expected_theta_and_tune_len(name, recipe)
    config = AutoConfig.from_pretrained(path)
    assert config.rope_parameters["rope_theta"] == theta
    assert config.rope_harness_law == {"pretrain_base": recipe.pretrain_base, "train_len": recipe.train_len,
                                       "tune_len": tune_len}
    assert config.max_position_embeddings == recipe.train_len
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32
    head_dim = config.hidden_size // config.num_attention_heads
    expected = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    torch.testing.assert_close(inv_freq, expected)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("def f():", add_special_tokens=False)["input_ids"]
    assert ids == list(b"def f():") and tokenizer.bos_token_id == 256
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[256, *ids]])).logits
    assert logits.shape == (1, 1 + len(ids), config.vocab_size) and torch.isfinite(logits).all()


def test_tiny_zoo_trains_end_to_end(tmp_path):
    recipe = Recipe.tiny()
    paths = train_family(tmp_path, recipe)
    assert [p.name for p in paths] == zoo_names()
    for path in paths:
        assert (path / "model.safetensors").is_file()
        _check_checkpoint(path, path.name, recipe)
    card = (tmp_path / "CARD.md").read_text()
    assert all(name in card for name in zoo_names())


def test_train_refuses_an_unwritable_out_before_training(tmp_path, capsys):
    from harness.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["zoo", "train", "--tiny", "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_unknown_zoo_name_is_input_error():
    with pytest.raises(InputError, match="zoo:base-1e6"):
        resolve("zoo:nope")


@pytest.mark.parametrize("name", list(FAMILY))
def test_packaged_checkpoint_loads_by_name(name):
    path = resolve(f"zoo:{name}")
    assert path.name == name
    _check_checkpoint(path, name, Recipe())
    config = json.loads((path / "config.json").read_text())
    assert config["dtype"] == "float32"  # stored bf16, a plain load computes in float32


def test_packaged_family_is_small():
    total = sum(p.stat().st_size for p in ZOO_DIR.rglob("*") if p.is_file())
    assert total < 20e6
