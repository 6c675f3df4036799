"""Load any HF causal LM with RoPE, apply a RoPE override to its config, verify it, describe it.

One function edits the config (`apply_override`), one verifies the built model (`verify_rope`); the
RoPE manifest they produce is what every record carries. Lengths past max_position_embeddings are the
point of this tool: nothing here refuses or truncates them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import rope_math
from harness.errors import InputError, one_line
from harness.law import check_inputs as check_law_inputs

log = logging.getLogger("rope_harness")

ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope")
_USED_KEYS: dict[str, set[str]] = {  # scaling keys each rope type reads (transformers' rope init functions)
    "default": set(), "linear": {"factor"}, "ntk": {"factor"}, "dynamic": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "attention_factor", "truncate"},
    "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
    "longrope": {"factor", "original_max_position_embeddings", "short_factor", "long_factor", "attention_factor"},
}
_TYPE_KEYS = set().union(*_USED_KEYS.values())  # keys that belong to one rope type and must not leak into another
_COMMON_KEYS = {"rope_theta"}  # read by every rope type (transformers' rope validation also lists partial_rotary_factor)
# transformers computes base**(i/d) in float32: past ~1e25 its rounding exceeds verify_rope's tolerance for some
# rotary dims, and near 1e38 the frequencies underflow to 0; 1e20 leaves a wide margin above any real base.
MAX_THETA = 1e20
_F32_TINY, _F32_MAX = 1.1754943508222875e-38, 3.4028234663852886e38  # float32's normal range
LAW_SECTION = "full_attention"  # Gemma3-style per-layer-type RoPE: the law reads the global layers


@dataclass
class RopeOverride:
    """What the user asked to change (None = keep the checkpoint's value)."""

    theta: float | None = None
    rope_type: str | None = None
    factor: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    pretrain_base: float | None = None
    train_len: int | None = None
    tune_len: int | None = None

    def changes_rope(self) -> bool:
        return self.theta is not None or self.rope_type is not None or self.factor is not None or bool(self.params)


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    config: Any
    manifest: dict[str, Any]
    fingerprint: str
    device: str
    dtype: str
    attn: str


# ----------------------------------------------------------------------------------------- config


def resolve_model_path(model_id: str) -> str:
    """zoo:NAME -> the packaged checkpoint folder; anything else is a local path or hub id."""
    if model_id.startswith("zoo:"):
        from harness.zoo import resolve

        return str(resolve(model_id))
    return model_id


def use_cache_if_hub_unreachable() -> None:
    """No route to the hub: read the local hub cache only, as HF_HUB_OFFLINE=1 would, instead of ~25 s of
    retries and a screen of warnings before the same one-line error (or the same cached files)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        log.info("%s is unreachable: using the local hub cache only", constants.ENDPOINT)
        constants.HF_HUB_OFFLINE = True
        datasets_config = sys.modules.get("datasets.config")  # datasets keeps its own copy of the flag
        if datasets_config is not None and hasattr(datasets_config, "HF_HUB_OFFLINE"):
            datasets_config.HF_HUB_OFFLINE = True


def load_config(model_id: str, revision: str | None = None, trust_remote_code: bool = False):
    """AutoConfig without weights; missing paths and unreachable hub ids become one-line InputErrors."""
    from transformers import AutoConfig

    path = resolve_model_path(model_id)
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1  # a hub id is exactly owner/name
    if looks_local and not Path(path).expanduser().exists():
        raise InputError(f"model path {path!r} does not exist: pass an existing folder or a hub id (owner/name)")
    if not Path(path).expanduser().exists():
        use_cache_if_hub_unreachable()
    try:
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:
        hint = "check the path or hub id; offline, download it first or pass a local folder"
        raise InputError(f"cannot load the config of {model_id!r} ({one_line(exc, 160)}): {hint}") from None


def text_config(config):
    """The language-model part of a (possibly multimodal) config."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter else config


def rope_sections(config) -> dict[str | None, dict[str, Any]]:
    """RoPE parameter dicts by layer type (None for the usual single dict). Raises for non-RoPE models."""
    text = text_config(config)
    params = getattr(text, "rope_parameters", None)
    if not params:
        raise InputError(f"{type(text).__name__} has no rotary position embedding (rope_parameters): "
                         "rope-harness evaluates RoPE models only (Llama, Mistral, Qwen, Gemma, Phi3, GPT-NeoX, ...)")
    if all(isinstance(v, dict) or v is None for v in params.values()) and "rope_theta" not in params:
        return {k: v for k, v in params.items() if v is not None}
    return {None: params}


def law_section(config) -> str | None:
    sections = rope_sections(config)
    return LAW_SECTION if LAW_SECTION in sections else next(iter(sections))


def rotary_dim(config, section: str | None = None) -> int:
    text = text_config(config)
    params = rope_sections(config)[section]
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    partial = params.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", None) or 1.0)
    return int(head_dim * partial)


def max_positions(config) -> int:
    return int(text_config(config).max_position_embeddings)


def _law_entry(config) -> dict[str, Any]:
    entry = getattr(text_config(config), "rope_harness_law", None) or getattr(config, "rope_harness_law", None)
    return dict(entry) if isinstance(entry, dict) else {}


def law_inputs(config, override: RopeOverride | None = None) -> dict[str, Any]:
    """pretrain_base / train_len / tune_len / rotary_dim of the checkpoint, each with its source.

    Must be called on the config *before* the override is applied (pretrain_base is the checkpoint's).
    """
    override = override or RopeOverride()
    _check_override(override)  # the flags' own messages come before the law's checks of the resolved values
    section = law_section(config)
    params = rope_sections(config)[section]
    entry = _law_entry(config)
    text = text_config(config)

    def pick(flag, key, fallbacks):
        if flag is not None:
            return flag, "flag"
        if entry.get(key) is not None:
            return entry[key], "rope_harness_law"
        for value, source in fallbacks:
            if value is not None:
                return value, source
        return None, None

    base, base_src = pick(override.pretrain_base, "pretrain_base", [(params.get("rope_theta"), "rope_theta")])
    original = params.get("original_max_position_embeddings") or getattr(text, "original_max_position_embeddings", None)
    train, train_src = pick(override.train_len, "train_len", [(original, "original_max_position_embeddings"),
                                                             (text.max_position_embeddings, "max_position_embeddings")])
    tune, tune_src = pick(override.tune_len, "tune_len", [(train, "train_len")])
    check_law_inputs(train, tune, base)  # compare the resolved values: a config's train_len can meet a --tune-len flag
    return {"rotary_dim": rotary_dim(config, section), "pretrain_base": float(base), "pretrain_base_source": base_src,
            "train_len": int(train), "train_len_source": train_src, "tune_len": int(tune), "tune_len_source": tune_src}


def law_inputs_for(model: str, revision: str | None = None, trust_remote_code: bool = False,
                   pretrain_base: float | None = None, train_len: int | None = None,
                   tune_len: int | None = None) -> dict[str, Any]:
    """Law inputs straight from a model's config (no weights), for `rope-harness law --model`."""
    config = load_config(model, revision, trust_remote_code)
    inputs = law_inputs(config, RopeOverride(pretrain_base=pretrain_base, train_len=train_len, tune_len=tune_len))
    own = rope_sections(config)[law_section(config)]
    return {**inputs, "rope_theta": float(own["rope_theta"]), "rope_type": own.get("rope_type", "default")}


# --------------------------------------------------------------------------------------- override


def _check_override(override: RopeOverride) -> None:
    if override.rope_type is not None and override.rope_type not in ROPE_TYPES:
        raise InputError(f"unknown --rope-type {override.rope_type!r}: use one of {', '.join(ROPE_TYPES)}")
    if override.theta is not None and not override.theta > 1:
        raise InputError(f"--rope-theta must be > 1 (got {override.theta:g}): pass a base such as 10000 or 1e6")
    if override.factor is not None and not override.factor >= 1:
        raise InputError(f"--rope-factor must be >= 1 (got {override.factor:g}): a factor stretches the context, e.g. 4")
    for name in ("train_len", "tune_len"):
        value = getattr(override, name)
        if value is not None and value < 7:
            raise InputError(f"--{name.replace('_', '-')} must be a length above 2*pi (got {value}): pass the training length in tokens")


def _check_keys_used(override: RopeOverride, kind: str, section: str | None, config) -> None:
    """A key the rope type never reads (a scaling key of another type, or a typo) would be recorded (label,
    hash) but change nothing."""
    asked = set(override.params) | ({"factor"} if override.factor is not None else set())
    if asked & {"rope_type", "type"}:  # apply_override sets rope_type from --rope-type: a param would be overwritten
        raise InputError("--rope-param rope_type is not read: pass --rope-type TYPE (rope_type in a suite) instead")
    if "partial_rotary_factor" in asked:  # Llama ignores it (verify_rope fails); GPT-NeoX obeys, the manifest's rotary_dim not
        raise InputError("--rope-param partial_rotary_factor changes which head dimensions rotate (the architecture), "
                         "not a RoPE setting: drop it")
    if kind in _USED_KEYS:  # a type unknown here is not judged
        valid = _COMMON_KEYS | _USED_KEYS[kind] | set(getattr(text_config(config), "ignore_keys_at_rope_validation",
                                                              None) or ())
        unknown = sorted(asked - valid - _TYPE_KEYS)
        if unknown:
            raise InputError(f"unknown RoPE parameter {', '.join(unknown)}: rope_type {kind} reads "
                             f"{', '.join(sorted(valid))}; fix the name or drop the --rope-param")
    ignored = sorted((asked & _TYPE_KEYS) - _USED_KEYS.get(kind, _TYPE_KEYS))  # a type unknown here is not judged
    if ignored:
        raise InputError(f"rope_type {kind} ignores {', '.join(ignored)}: add --rope-type with a scaling type that "
                         f"uses it ({', '.join(t for t in ROPE_TYPES if set(ignored) <= _USED_KEYS[t])}) or drop it")
    if section is not None and override.params.get("truncate") is False:  # transformers reads it from the top level
        raise InputError("--rope-param truncate=false is ignored by transformers for per-layer-type RoPE (Gemma3): "
                         "drop it")


def _check_frequencies(params: dict[str, Any], kind: str, dim: int, mpe: int) -> None:
    """The model keeps inv_freq in float32: a base or factor it cannot represent would fail verify_rope with a
    traceback (or overflow before it) instead of naming the flag to change."""
    theta, flags = params["rope_theta"], "--rope-theta or --rope-factor" if kind == "ntk" else "--rope-theta"
    asked = f"rope_type {kind}, rope_theta {theta!r}" + (f", factor {params['factor']!r}" if "factor" in params else "")
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta <= MAX_THETA):
        what = "the effective NTK base b*s^(d/(d-2))" if kind == "ntk" else "rope_theta"
        raise InputError(f"{what} {theta!r} is above {MAX_THETA:g}, where float32 RoPE frequencies lose their "
                         f"precision: pass a smaller {flags}")
    if kind not in _USED_KEYS:  # rope_math knows only these; verify_rope names any other
        return
    try:
        values, _ = rope_math.inv_freq(params, dim, mpe)
    except (ArithmeticError, ValueError) as exc:
        raise InputError(f"{asked} gives no RoPE frequencies ({one_line(exc, 80)}): check --rope-factor and the "
                         "--rope-param values") from None
    if not all(_F32_TINY <= v <= _F32_MAX for v in values):
        raise InputError(f"{asked} gives RoPE frequencies outside float32's range ({min(values):g} to "
                         f"{max(values):g}): pass a smaller --rope-factor or fix the --rope-param values")


def apply_override(config, override: RopeOverride) -> dict[str, Any]:
    """Edit the config's RoPE parameters in place (before the model is built); return the spec applied.

    Static NTK (`ntk`) becomes default RoPE with theta b*s^(d/(d-2)); for per-layer-type configs
    (Gemma3) the override goes to the global-attention layers. Returns the user-facing spec
    (rope_type as asked, e.g. "ntk", with its factor) for the manifest.
    """
    _check_override(override)
    section = law_section(config)
    sections = rope_sections(config)
    current = sections[section]
    kind = override.rope_type or current.get("rope_type", "default")
    _check_keys_used(override, kind, section, config)
    new = dict(current)
    if override.rope_type is not None and override.rope_type != current.get("rope_type", "default"):
        new = {k: v for k, v in new.items() if k not in _TYPE_KEYS}
    if override.theta is not None:
        new["rope_theta"] = float(override.theta)
    if override.factor is not None:
        new["factor"] = float(override.factor)
    new.update(override.params)
    dim = rotary_dim(config, section)
    mpe = max_positions(config)
    if kind in ("linear", "dynamic", "yarn", "llama3", "ntk") and new.get("factor") is None:
        raise InputError(f"--rope-type {kind} needs a scaling factor: add --rope-factor F (e.g. 4)")
    if kind in ("yarn", "llama3", "longrope"):
        new.setdefault("original_max_position_embeddings", law_inputs(config).get("train_len") or mpe)
    if kind == "llama3":
        new.setdefault("low_freq_factor", 1.0)
        new.setdefault("high_freq_factor", 4.0)
    if kind == "longrope":
        for key in ("short_factor", "long_factor"):
            factors = new.get(key)
            if not isinstance(factors, list) or len(factors) != dim // 2:
                raise InputError(f"--rope-type longrope needs {key} as a list of {dim // 2} numbers: "
                                 f"add --rope-param {key}=[...] (JSON)")
    spec = dict(new, rope_type=kind)
    if kind == "ntk":
        spec["ntk_base_theta"] = new["rope_theta"]
        new["rope_theta"] = rope_math.ntk_theta(new["rope_theta"], new.pop("factor"), dim)
        new["rope_type"] = "default"
        spec["rope_theta"] = new["rope_theta"]
    else:
        new["rope_type"] = kind
    _check_frequencies(new, kind, dim, mpe)
    text = text_config(config)
    if section is None:
        text.rope_parameters = new
        if "original_max_position_embeddings" in override.params and hasattr(text, "original_max_position_embeddings"):
            text.original_max_position_embeddings = new["original_max_position_embeddings"]  # Phi3: top level wins
    else:
        text.rope_parameters[section] = new
    return spec


# ------------------------------------------------------------------------------------ verification


def rotary_buffers(model) -> Iterator[tuple[Any, str | None, Any]]:
    """(rotary module, layer-type section or None, inv_freq buffer) for every RoPE module."""
    for name, buffer in model.named_buffers():
        leaf = name.rsplit(".", 1)[-1]
        if not leaf.endswith("inv_freq") or "original" in leaf or leaf.startswith("long_"):
            continue
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        section = leaf[: -len("_inv_freq")] if leaf != "inv_freq" else None
        yield module, section, buffer


def expected_inv_freq(config, section: str | None, length: int | None = None):
    import torch

    params = rope_sections(config)[section]
    values, scaling = rope_math.inv_freq(params, rotary_dim(config, section), max_positions(config), length)
    return torch.tensor(values, dtype=torch.float64), scaling


def verify_rope(model, config) -> dict[str | None, tuple[Any, float]]:
    """Check every RoPE buffer equals the frequencies recomputed from the config; float32 only."""
    import torch

    seen: dict[str | None, tuple[Any, float]] = {}
    for module, section, buffer in rotary_buffers(model):
        if buffer.dtype != torch.float32:
            raise RuntimeError(f"RoPE inv_freq is {buffer.dtype}, not float32: load with from_pretrained(dtype=...), "
                               "never model.to(dtype)")
        expected, scaling = expected_inv_freq(config, section)
        actual = buffer.detach().to("cpu", torch.float64)
        if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=2e-6, atol=0):
            raise RuntimeError(f"RoPE override did not take effect for section {section or 'all'}: "
                               f"model inv_freq[:3]={actual[:3].tolist()} expected {expected[:3].tolist()}")
        have_scaling = getattr(module, f"{section}_attention_scaling" if section else "attention_scaling", 1.0)
        if abs(float(have_scaling) - scaling) > 1e-6 * max(1.0, abs(scaling)):
            raise RuntimeError(f"RoPE attention scaling is {have_scaling}, expected {scaling}")
        seen[section] = (actual.to(torch.float32), scaling)
    if not seen:
        raise InputError(f"{type(model).__name__} has no RoPE inv_freq buffer: rope-harness evaluates RoPE models only")
    return seen


def is_length_dependent(config) -> bool:
    return any(p.get("rope_type") in rope_math.LENGTH_DEPENDENT_TYPES for p in rope_sections(config).values())


@contextlib.contextmanager
def rope_fixed_for_length(model, config, length: int) -> Iterator[None]:
    """Freeze length-dependent RoPE at the frequencies a fresh model would use for `length` tokens.

    transformers' dynamic NTK is stateful (recomputes only when it sees a longer input) and LongRoPE
    switches at original_max_position_embeddings; both break chunked prefill. Inside this context the
    modules use fixed frequencies (their rope_type reads as default), restored on exit.
    """
    import torch

    saved = []
    for module, section, buffer in rotary_buffers(model):
        params = rope_sections(config)[section]
        if params.get("rope_type") not in rope_math.LENGTH_DEPENDENT_TYPES:
            continue
        values, scaling = expected_inv_freq(config, section, length)
        scaling_attr = f"{section}_attention_scaling" if section else "attention_scaling"
        saved.append((module, section, buffer.clone(), copy.copy(module.rope_type), getattr(module, scaling_attr)))
        buffer.copy_(values.to(dtype=torch.float32, device=buffer.device))
        setattr(module, scaling_attr, scaling)
        if section is None:
            module.rope_type = "default"
        else:
            module.rope_type = dict(module.rope_type, **{section: "default"})
    try:
        yield
    finally:
        for module, section, old, rope_type, scaling in saved:
            getattr(module, f"{section}_inv_freq" if section else "inv_freq").copy_(old)
            setattr(module, f"{section}_attention_scaling" if section else "attention_scaling", scaling)
            module.rope_type = rope_type


# ---------------------------------------------------------------------------------------- manifest


def rope_manifest(config, spec: dict[str, Any], law: dict[str, Any], inv_freqs: dict, changed: bool) -> dict[str, Any]:
    """The RoPE manifest of DESIGN.md; rope_hash covers every field plus the inv_freq bytes."""
    section = law_section(config)
    params = {k: v for k, v in spec.items() if k not in ("rope_type", "rope_theta")}
    manifest = {
        "rope_type": spec.get("rope_type", "default"),
        "rope_theta": float(spec["rope_theta"]),
        "rope_params": params,
        "rotary_dim": law["rotary_dim"],
        "attention_scaling": float(inv_freqs[section][1]) if section in inv_freqs else 1.0,
        "rope_section": section,
        **law,
        "law_assumes_finetune": bool(changed and law["tune_len_source"] != "flag"
                                     and float(spec["rope_theta"]) != law["pretrain_base"]),
    }
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode())
    for key in sorted(inv_freqs, key=str):
        digest.update(inv_freqs[key][0].numpy().tobytes())
    manifest["rope_hash"] = digest.hexdigest()[:16]
    return manifest


def model_fingerprint(path: str, config, revision: str | None) -> str:
    """Config hash + weight-file identities: a changed checkpoint never reuses stale cells.

    Hub snapshots name their blobs by sha256 (the symlink target), so those are free; local files are
    identified by name, size and a sha256 of their first and last 4 MiB (hashing whole multi-GB
    weights would cost more than many cells).
    """
    digest = hashlib.sha256(config.to_json_string(use_diff=False).encode())
    folder = Path(path).expanduser()
    if folder.is_dir():
        for file in sorted(folder.iterdir()):
            if file.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
                continue
            digest.update(file.name.encode())
            if file.is_symlink():
                digest.update(os.readlink(file).encode())
                continue
            size = file.stat().st_size
            digest.update(str(size).encode())
            with open(file, "rb") as handle:
                digest.update(handle.read(4 << 20))
                if size > 8 << 20:
                    handle.seek(-(4 << 20), os.SEEK_END)
                    digest.update(handle.read())
    else:
        digest.update(f"{path}@{revision or 'main'}".encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------- load


def pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_attn(attn: str | None, device: str) -> str:
    """flash_attention_2 on CUDA where installed, else sdpa; an explicit choice is checked."""
    import importlib.util

    flash_ok = device.startswith(("cuda", "auto")) and importlib.util.find_spec("flash_attn") is not None
    if attn == "flash_attention_2" and not flash_ok:
        raise InputError("--attn flash_attention_2 needs CUDA and the flash-attn package: install it (README, GPU) or use --attn sdpa")
    return attn or ("flash_attention_2" if flash_ok else "sdpa")


def pick_dtype(dtype: str | None, device: str) -> str:
    if dtype in (None, "auto"):
        return "float32" if device == "cpu" else "bfloat16"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise InputError(f"unknown --dtype {dtype!r}: use float32, bfloat16, float16 or auto")
    return dtype


def load(model_id: str, override: RopeOverride | None = None, *, dtype: str | None = None, device: str | None = None,
         attn: str | None = None, revision: str | None = None, trust_remote_code: bool = False) -> Loaded:
    """Config -> override -> model (weights in `dtype`, RoPE float32) -> verified manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    override = override or RopeOverride()
    path = resolve_model_path(model_id)
    config = load_config(model_id, revision, trust_remote_code)
    law = law_inputs(config, override)
    spec = apply_override(config, override)  # validates the override first
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    chosen = attn
    attn = pick_attn(attn, device)
    placement = {"device_map": "auto"} if device == "auto" else {}

    def build(implementation: str):
        return AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=getattr(torch, dtype), attn_implementation=implementation, revision=revision,
            trust_remote_code=trust_remote_code, **placement)

    try:
        try:
            model = build(attn)
        except ValueError as exc:  # e.g. Gemma2 has no sdpa path: an automatic choice falls back to eager
            if chosen is not None or "attention implementation" not in str(exc):
                raise
            attn = "eager"
            model = build(attn)
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model {model_id!r} ({one_line(exc, 160)}): check the path/hub id, network, and --attn") from None
    if device != "auto":
        model.to(device)  # moves; never casts (inv_freq must stay float32)
    model.eval()
    inv_freqs = verify_rope(model, config)
    manifest = rope_manifest(config, spec, law, inv_freqs, override.changes_rope())
    return Loaded(model, tokenizer, config, manifest, model_fingerprint(path, config, revision), device, dtype, attn)


def default_label(model_id: str, manifest: dict[str, Any]) -> str:
    """<model basename>:<rope_type>:<theta>[:f<factor>] (DESIGN.md)."""
    base = model_id.rstrip("/").rsplit("/", 1)[-1]
    theta = manifest["rope_params"].get("ntk_base_theta", manifest["rope_theta"])
    label = f"{base}:{manifest['rope_type']}:{_short(theta)}"
    factor = manifest["rope_params"].get("factor")
    return f"{label}:f{_short(factor)}" if factor is not None else label


def _short(x: float) -> str:
    """`:g` (10000, 1e+06: the labels of existing runs) with just enough digits to tell two values apart:
    plain `:g` gave 1.0000001 the label of 1 and so merged two settings into one."""
    return next((text for p in range(6, 18) if float(text := f"{x:.{p}g}") == x), repr(x))
