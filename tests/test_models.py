"""RoPE overrides reach the built model (every family, every type); manifest and hash; bad input."""

import copy

import pytest
import torch
from tiny import FAMILIES, OVERRIDES, make_tiny

from harness.core.errors import InputError
from harness.law import rope_math
from harness.model import models, rope_config


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    return {name: make_tiny(tmp_path_factory.mktemp(name), name) for name in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_theta_override_reaches_every_family(family, family_dirs):
    loaded = models.load(str(family_dirs[family]), rope_config.RopeOverride(theta=5e5))
    section = loaded.manifest["rope_section"]
    dim = loaded.manifest["rotary_dim"]
    want = torch.tensor([1 / 5e5 ** (i / dim) for i in range(0, dim, 2)], dtype=torch.float32)
    buffers = {s: b for _, s, b in models.rotary_buffers(loaded.model)}
    assert buffers[section].dtype == torch.float32
    assert torch.allclose(buffers[section], want, rtol=1e-6)
    assert loaded.manifest["rope_theta"] == 5e5 and loaded.manifest["pretrain_base"] == 10000.0
    assert loaded.manifest["law_assumes_finetune"] is True
    if family == "gemma3":  # the local (sliding) layers keep their own base
        assert section == "full_attention"
        assert torch.allclose(buffers["sliding_attention"][1], torch.tensor(1 / 1e4 ** (2 / dim)), rtol=1e-6)
    if family == "gpt_neox":
        assert dim == 8  # partial_rotary_factor 0.5 of head_dim 16


@pytest.mark.parametrize("name", list(OVERRIDES))
def test_every_rope_type_verifies_on_llama(name, tiny_llama):
    override = OVERRIDES[name]
    loaded = models.load(str(tiny_llama), override)
    m = loaded.manifest
    assert m["rope_type"] == (override.rope_type or "default")
    if name == "ntk":  # applied as default RoPE with theta b*s^(d/(d-2))
        assert m["rope_theta"] == pytest.approx(rope_math.ntk_theta(1e4, 4, 16))
        assert loaded.config.rope_parameters["rope_type"] == "default"
    if name == "yarn":
        assert m["attention_scaling"] == pytest.approx(0.1 * torch.log(torch.tensor(4.0)).item() + 1)


def test_verify_catches_a_model_that_ignored_the_override(tiny_llama):
    loaded = models.load(str(tiny_llama), rope_config.RopeOverride(theta=5e5))
    config = copy.deepcopy(loaded.config)
    config.rope_parameters["rope_theta"] = 123456.0  # pretend the override asked for something else
    with pytest.raises(RuntimeError, match="did not take effect"):
        models.verify_rope(loaded.model, config)


def test_verify_rejects_bf16_inv_freq(tiny_llama):
    loaded = models.load(str(tiny_llama))
    loaded.model.to(torch.bfloat16)  # the pitfall: casts inv_freq too
    with pytest.raises(RuntimeError, match="float32"):
        models.verify_rope(loaded.model, loaded.config)


def test_bf16_load_keeps_float32_rope(tiny_llama):
    loaded = models.load(str(tiny_llama), dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert all(b.dtype == torch.float32 for _, _, b in models.rotary_buffers(loaded.model))


def test_hash_differs_whenever_a_parameter_differs(tiny_llama):
    hashes = {models.load(str(tiny_llama), o).manifest["rope_hash"] for o in [
        rope_config.RopeOverride(), rope_config.RopeOverride(theta=5e5),
        rope_config.RopeOverride(theta=5e5 + 1),
        rope_config.RopeOverride(rope_type="linear", factor=4),
        rope_config.RopeOverride(rope_type="linear", factor=2),
        rope_config.RopeOverride(rope_type="yarn", factor=4),
        rope_config.RopeOverride(rope_type="yarn", factor=4, params={"beta_fast": 16})]}
    assert len(hashes) == 7
    assert (models.load(str(tiny_llama)).manifest["rope_hash"]
            == models.load(str(tiny_llama)).manifest["rope_hash"])


def test_law_inputs_stay_out_of_the_hash_but_in_its_earlier_form(tiny_llama):
    """The law's inputs change no number the model computes: not in rope_hash (a rerun with corrected inputs
    reuses every record); the form with them (rope_hash_v1) still reads folders written with it."""
    plain = models.load(str(tiny_llama)).manifest
    tuned = models.load(str(tiny_llama), rope_config.RopeOverride(pretrain_base=500.0, tune_len=512)).manifest
    assert tuned["rope_hash"] == plain["rope_hash"] and tuned["rope_hash_v1"] != plain["rope_hash_v1"]
    assert tuned["tune_len"] == 512 and tuned["tune_len_source"] == "flag"


def test_law_inputs_sources(tiny_llama, tmp_path):
    config = models.load_config(str(tiny_llama))
    law = rope_config.law_inputs(config)
    assert ((law["train_len"], law["train_len_source"], law["tune_len"], law["pretrain_base"])
            == (128, "max_position_embeddings", 128, 1e4))
    law = rope_config.law_inputs(config, rope_config.RopeOverride(train_len=4096, tune_len=8192,
                                                                  pretrain_base=5e5))
    assert ((law["train_len"], law["tune_len"], law["pretrain_base"], law["tune_len_source"])
            == (4096, 8192, 5e5, "flag"))
    config.rope_harness_law = {"pretrain_base": 1e4, "train_len": 64, "tune_len": 96}
    law = rope_config.law_inputs(config)
    assert (law["train_len"], law["tune_len"], law["train_len_source"]) == (64, 96, "rope_harness_law")
    phi = models.load_config(str(make_tiny(tmp_path / "phi", "phi3")))
    assert rope_config.law_inputs(phi)["train_len"] == 64  # original_max_position_embeddings wins


def test_length_dependent_rope_is_fixed_per_length_and_restored(tiny_llama):
    loaded = models.load(str(tiny_llama), rope_config.RopeOverride(rope_type="dynamic", factor=4))
    (_, _, buffer), = models.rotary_buffers(loaded.model)
    before = buffer.clone()
    with models.rope_fixed_for_length(loaded.model, loaded.config, 1024):
        theta = rope_math.dynamic_theta(1e4, 4, 16, 1024, 128)
        assert torch.allclose(buffer, torch.tensor([1 / theta ** (i / 16) for i in range(0, 16, 2)]),
                              rtol=1e-6)
    assert torch.equal(buffer, before)


@pytest.mark.parametrize("override, message", [
    (rope_config.RopeOverride(rope_type="nope"), "unknown --rope-type"),
    (rope_config.RopeOverride(theta=1.0), "--rope-theta must be > 1"),
    (rope_config.RopeOverride(rope_type="linear", factor=0.5), "--rope-factor must be >= 1"),
    (rope_config.RopeOverride(rope_type="yarn"), "needs a scaling factor"),
    (rope_config.RopeOverride(rope_type="longrope"), "short_factor"),
    (rope_config.RopeOverride(train_len=3), "--train-len"),
    (rope_config.RopeOverride(factor=4), "rope_type default ignores factor"),  # a forgotten --rope-type
    (rope_config.RopeOverride(rope_type="linear", factor=4, params={"beta_fast": 8}),
     "linear ignores beta_fast"),
    # a typo was recorded in rope_params and the hash but changed nothing
    (rope_config.RopeOverride(params={"bogus": 3}),
     "unknown RoPE parameter bogus: rope_type default reads rope_theta;"),
    (rope_config.RopeOverride(rope_type="yarn", factor=4, params={"beta_fst": 8}),
     "rope_type yarn reads .*beta_fast"),
    (rope_config.RopeOverride(params={"rope_type": "yarn"}), "pass --rope-type"),
    # a traceback
    (rope_config.RopeOverride(params={"partial_rotary_factor": 0.5}), "partial_rotary_factor .* drop it"),
    # law inputs the law refuses were only found out in the report; train_len 128 comes from the config
    (rope_config.RopeOverride(pretrain_base=1.0), "pre-training base 1 must be greater than 1"),
    (rope_config.RopeOverride(pretrain_base=0.5), "pre-training base 0.5 must be greater than 1"),
    (rope_config.RopeOverride(tune_len=100), "tune length 100 is shorter than train length 128"),
    # frequencies float32 cannot hold: OverflowError / "did not take effect" tracebacks before
    (rope_config.RopeOverride(rope_type="ntk", factor=1e308), "effective NTK base .* inf is above 1e\\+20"),
    (rope_config.RopeOverride(theta=1e308), "rope_theta 1e\\+308 is above 1e\\+20.*smaller --rope-theta"),
    (rope_config.RopeOverride(rope_type="linear", factor=1e300),
     "outside float32's range.*smaller --rope-factor"),
])
def test_bad_overrides_are_one_line_errors(override, message, tiny_llama):
    with pytest.raises(InputError, match=message) as err:
        models.load(str(tiny_llama), override)
    assert "\n" not in str(err.value)


def test_keys_and_values_transformers_reads_are_still_accepted(tiny_llama, tmp_path):
    """The new refusals stop at real misuse: common keys, the largest allowed base, and a tuning length that
    only exceeds a config's train_len (zoo base-1e6-t1024) all load and verify."""
    loaded = models.load(str(tiny_llama), rope_config.RopeOverride(params={"rope_theta": 2e4}))
    assert loaded.manifest["rope_theta"] == 2e4
    assert models.load(str(tiny_llama),
                       rope_config.RopeOverride(theta=rope_config.MAX_THETA)).manifest["rope_theta"] == 1e20
    config = models.load_config(str(tiny_llama))
    config.rope_harness_law = {"train_len": 64, "tune_len": 96}
    assert rope_config.law_inputs(config)["tune_len"] == 96
    with pytest.raises(InputError, match="tune length 32 is shorter than train length 64"):
        rope_config.law_inputs(config, rope_config.RopeOverride(tune_len=32))


def test_run_refuses_an_unknown_rope_param_and_writes_nothing(tiny_llama, tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "r"
    assert main(["run", "--model", str(tiny_llama), "--lengths", "64", "--samples", "1", "--rope-param",
                 "bogus=3", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown RoPE parameter bogus" in err and err.count("\n") == 0 and not out.exists()


@pytest.mark.parametrize("theta, factor, label", [
    (10000, None, "m:default:10000"), (1e6, None, "m:default:1e+06"), (5e5, 4.0, "m:default:500000:f4"),
    (1.0000001, None, "m:default:1.0000001"), (12345678.0, 1.0000001, "m:default:12345678:f1.0000001"),
])
def test_default_label_keeps_round_numbers_and_tells_near_ones_apart(theta, factor, label):
    """`:g` gave theta 1.0000001 the label of theta 1: two settings shared one label."""
    params = {} if factor is None else {"factor": factor}
    assert models.default_label("x/m", {"rope_type": "default", "rope_theta": theta,
                                        "rope_params": params}) == label


def test_original_max_positions_param_reaches_phi3_and_gemma3_truncate_is_refused(family_dirs):
    """Phi3's top-level original_max_position_embeddings wins in transformers: an explicit param must win
    there too; transformers ignores yarn's truncate for per-layer-type RoPE, so asking for it is an error."""
    override = rope_config.RopeOverride(rope_type="yarn", factor=4,
                                        params={"original_max_position_embeddings": 32})
    # original_max_position_embeddings 64 in the checkpoint
    loaded = models.load(str(family_dirs["phi3"]), override)
    assert loaded.manifest["rope_params"]["original_max_position_embeddings"] == 32
    (_, _, buffer), = models.rotary_buffers(loaded.model)
    values, _ = rope_math.inv_freq({"rope_type": "yarn", "rope_theta": 1e4, "factor": 4,
                                     "original_max_position_embeddings": 32}, 16, 128)
    assert torch.allclose(buffer, torch.tensor(values, dtype=torch.float32), rtol=1e-6)
    with pytest.raises(InputError, match="truncate"):
        models.load(str(family_dirs["gemma3"]), rope_config.RopeOverride(rope_type="yarn", factor=4,
                                                                     params={"truncate": False}))


def test_non_rope_model_and_missing_path(tmp_path):
    import transformers

    gpt2 = tmp_path / "gpt2"
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300).save_pretrained(gpt2)
    with pytest.raises(InputError, match="no rotary position embedding"):
        models.load(str(gpt2))
    with pytest.raises(InputError, match="does not exist"):
        models.load_config(str(tmp_path / "missing"))


def test_hub_id_offline_is_a_clear_error(offline):
    with pytest.raises(InputError, match="cannot load the config"):
        models.load_config("no-such-owner/no-such-model-xyz")


def test_unreachable_hub_switches_to_the_cache_before_any_request(monkeypatch):
    """No DNS for the hub: the cache-only mode is taken up front, not after five network retries."""
    import socket

    import huggingface_hub.constants

    def no_dns(*args, **kwargs):
        raise socket.gaierror("Name or service not known")

    def no_requests(*args, **kwargs):
        raise AssertionError("a network request was made")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket, "create_connection", no_requests)
    with pytest.raises(InputError, match="cannot load the config"):
        models.load_config("no-such-owner/no-such-model-xyz")
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def _fresh_inv_freqs(path, override, length):
    """Every rotary buffer of a freshly loaded model after one plain forward of `length` tokens."""
    model = models.load(str(path), override).model
    with torch.no_grad():
        model(torch.arange(length)[None] % 250)
    return {section: buffer.clone() for _, section, buffer in models.rotary_buffers(model)}


LONGROPE = rope_config.RopeOverride(rope_type="longrope", params={
    "short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [2.0 + 0.5 * i for i in range(8)]})


@pytest.mark.parametrize("family, override, lengths", [
    ("llama", OVERRIDES["dynamic"], (64, 128, 129, 333, 1000)),  # max_position_embeddings 128
    ("gemma3", OVERRIDES["dynamic"], (100, 300)),  # the global layers' section only
    ("phi3", LONGROPE, (50, 64, 65, 200)),  # short factors up to original_max_position_embeddings 64
])
def test_per_length_frequencies_equal_a_fresh_transformers_model_bit_for_bit(family, override, lengths,
                                                                             family_dirs):
    """The engine's fixed per-length frequencies (models.rope_fixed_for_length) are transformers' own
    (ROPE_INIT_FUNCTIONS), not a float64 recomputation rounded to float32."""
    path = family_dirs[family]
    loaded = models.load(str(path), override)
    before = {s: b.clone() for _, s, b in models.rotary_buffers(loaded.model)}
    for length in lengths:
        want = _fresh_inv_freqs(path, override, length)
        with models.rope_fixed_for_length(loaded.model, loaded.config, length):
            got = {s: b.clone() for _, s, b in models.rotary_buffers(loaded.model)}
        assert got.keys() == want.keys()
        for section in got:
            assert torch.equal(got[section], want[section]), (family, length, section)
    assert all(torch.equal(b, before[s]) for _, s, b in models.rotary_buffers(loaded.model))  # restored


def test_per_length_frequencies_are_checked_against_rope_math(tiny_llama, monkeypatch):
    """rope_math stays the independent verifier: frequencies transformers got wrong are refused."""
    loaded = models.load(str(tiny_llama), OVERRIDES["dynamic"])
    real = models.expected_inv_freq
    monkeypatch.setattr(models, "expected_inv_freq", lambda c, s, n=None: (real(c, s, n)[0] * 1.001, 1.0))
    with pytest.raises(RuntimeError, match="harness.law.rope_math"), \
            models.rope_fixed_for_length(loaded.model, loaded.config, 500):
        pass


def test_only_a_changed_base_assumes_finetuning(tiny_llama):
    """YaRN or PI on a checkpoint keep the base it was tuned with: the law's fine-tuning premise is not
    broken by them (they are outside the law anyway); a new base or static NTK is flagged."""
    def flagged(**kw) -> bool:
        override = rope_config.RopeOverride(pretrain_base=500.0, **kw)
        return models.load(str(tiny_llama), override).manifest["law_assumes_finetune"]

    assert not flagged(rope_type="yarn", factor=4) and not flagged(rope_type="linear", factor=2)
    assert flagged(theta=5e5) and flagged(rope_type="ntk", factor=2)
    assert flagged(theta=500.0)  # back to the pre-training base: this checkpoint was never tuned at it
