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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.core.errors import InputError, one_line
from harness.data.hub import use_cache_if_hub_unreachable
from harness.law import rope_math
from harness.model import gguf
from harness.model.checkpoints import PACKAGED, packaged_path
from harness.model.fingerprint import model_fingerprints
from harness.model.rope_config import (
    RopeOverride,
    apply_override,
    hybrid_layers,
    law_inputs,
    law_section,
    max_positions,
    rope_sections,
    rotary_dim,
)
from harness.model.zoo_models import resolve as resolve_zoo

log = logging.getLogger("rope_harness")
# manifest fields of the law's inputs: analysis-time facts, outside rope_hash and the experiment identity
LAW_FIELDS = ("pretrain_base", "pretrain_base_source", "train_len", "train_len_source", "tune_len",
              "tune_len_source", "law_assumes_finetune")

# Manifest fields known before any weight is loaded; records carry them, the identity check compares them.
ROPE_FIELDS = ("rope_type", "rope_theta", "rope_params", "rotary_dim", "pretrain_base", "train_len",
               "tune_len", "pretrain_base_source", "train_len_source", "tune_len_source")


@dataclass(frozen=True)
class Checkpoint:
    """A setting's model described without weights (config, override, law inputs, fingerprints): built once
    by the run plan and handed to `load`, which adds the weights."""

    model_id: str
    path: str
    revision: str | None
    trust_remote_code: bool
    override: RopeOverride
    config: Any  # the overridden config
    rope_spec: dict[str, Any]  # the applied rope parameters (apply_override)
    law: dict[str, Any]
    fingerprint: str  # of the overridden config + weights (the cell keys' `fingerprint`)
    model_fingerprint: str  # of the checkpoint alone (config before the override + weights)
    tokenizer: Any = None
    source_config: Any = None  # the checkpoint's config before the override (what a served engine is told)

    def manifest(self) -> dict[str, Any]:
        """The RoPE manifest before the weights (no inv_freq bytes: its rope_hash is the loaded model's)."""
        return rope_manifest(self.config, self.rope_spec, self.law, {}, self.override.changes_base())

    def rope_and_label(self) -> tuple[dict[str, Any], str]:
        """The manifest's RoPE fields as records carry them (rope_params as canonical JSON) and the default
        label, from one manifest."""
        manifest = self.manifest()
        rope = {k: manifest[k] for k in ROPE_FIELDS}
        rope["rope_params"] = json.dumps(rope["rope_params"], sort_keys=True)
        return rope, default_label(self.model_id, manifest)


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
    """zoo:NAME -> the packaged checkpoint folder; a packaged real model's name (smollm2) -> its GGUF file;
    anything else is a local path (folder or .gguf file) or hub id."""
    if model_id.startswith("zoo:"):
        return str(resolve_zoo(model_id))
    if model_id in PACKAGED:
        return str(packaged_path(model_id))
    return model_id


def load_config(model_id: str, revision: str | None = None, trust_remote_code: bool = False):
    """AutoConfig without weights; missing paths and unreachable hub ids become one-line InputErrors."""
    from transformers import AutoConfig

    path = resolve_model_path(model_id)
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1  # a hub id is exactly owner/name
    if looks_local and not Path(path).expanduser().exists():
        raise InputError(f"model path {path!r} does not exist: pass an existing folder or a hub id "
                         "(owner/name)")
    if gguf.is_gguf(path):
        return gguf.read_config(path)
    if not Path(path).expanduser().exists():
        use_cache_if_hub_unreachable()
    try:
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:
        hint = "check the path or hub id; offline, download it first or pass a local folder"
        raise InputError(f"cannot load the config of {model_id!r} ({one_line(exc, 160)}): {hint}") from None


def law_inputs_for(model: str, revision: str | None = None, trust_remote_code: bool = False,
                   pretrain_base: float | None = None, train_len: int | None = None,
                   tune_len: int | None = None) -> dict[str, Any]:
    """Law inputs straight from a model's config (no weights), for `rope-harness law --model`."""
    config = load_config(model, revision, trust_remote_code)
    inputs = law_inputs(config, RopeOverride(pretrain_base=pretrain_base, train_len=train_len,
                                             tune_len=tune_len))
    own = rope_sections(config)[law_section(config)]
    return {**inputs, "rope_theta": float(own["rope_theta"]), "rope_type": own.get("rope_type", "default"),
            "hybrid": hybrid_layers(config)}


def load_tokenizer(model_id: str, revision: str | None = None, trust_remote_code: bool = False):
    """The model's tokenizer (a GGUF file's from its metadata); load errors propagate to the caller."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model_id)
    if gguf.is_gguf(path):
        return gguf.read_tokenizer(path)
    _refuse_folder_without_tokenizer(path)
    return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


# a tokenizer's own files, as save_pretrained writes them (fast, sentencepiece, BPE, WordPiece, tiktoken)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "merges.txt", "spiece.model", "sentencepiece.bpe.model")


def _refuse_folder_without_tokenizer(path: str) -> None:
    """A local model folder with none of a tokenizer's files (weights and config.json only) is one
    InputError naming that, not transformers' guess that sentencepiece or tiktoken is missing."""
    folder = Path(path).expanduser()
    config = folder / "config.json"
    if (not folder.is_dir() or any((folder / name).is_file() for name in TOKENIZER_FILES)
            or any(folder.glob("*.tiktoken"))
            or (config.is_file() and '"AutoTokenizer"' in config.read_text(errors="replace"))):
        return  # transformers finds a tokenizer there (a tiktoken file, or one in the model's own code)
    raise InputError(f"model folder {path} has no tokenizer files (tokenizer.json, tokenizer.model or "
                     f"tokenizer_config.json): save the tokenizer beside the weights, e.g. "
                     f"tokenizer.save_pretrained({str(path)!r})")


def weights_source(path: str) -> dict[str, Any]:
    """Record fields naming the weights' origin: a GGUF file's tensor types and hash; {} for HF weights."""
    return gguf.describe(path) if gguf.is_gguf(path) else {}


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
            raise RuntimeError(f"RoPE inv_freq is {buffer.dtype}, not float32: load with "
                               "from_pretrained(dtype=...), never model.to(dtype)")
        expected, scaling = expected_inv_freq(config, section)
        actual = buffer.detach().to("cpu", torch.float64)
        if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=2e-6, atol=0):
            raise RuntimeError(f"RoPE override did not take effect for section {section or 'all'}: "
                               f"model inv_freq[:3]={actual[:3].tolist()} expected {expected[:3].tolist()}")
        have_scaling = getattr(module, f"{section}_attention_scaling" if section else "attention_scaling",
                               1.0)
        if abs(float(have_scaling) - scaling) > 1e-6 * max(1.0, abs(scaling)):
            raise RuntimeError(f"RoPE attention scaling is {have_scaling}, expected {scaling}")
        seen[section] = (actual.to(torch.float32), scaling)
    if not seen:
        raise InputError(f"{type(model).__name__} has no RoPE inv_freq buffer: rope-harness evaluates RoPE "
                         "models only")
    return seen


@contextlib.contextmanager
def rope_fixed_for_length(model, config, length: int) -> Iterator[None]:
    """Freeze length-dependent RoPE at the frequencies a fresh model would use for `length` tokens.

    transformers' dynamic NTK is stateful (recomputes only when it sees a longer input) and LongRoPE
    switches at original_max_position_embeddings; both break chunked prefill. The frequencies come from
    transformers' own ROPE_INIT_FUNCTIONS, called as a fresh model's first forward of `length` tokens calls
    them (bit for bit the same), and are checked against harness.law.rope_math (the independent
    recomputation).
    Inside this context the modules use them fixed (their rope_type reads as default), restored on exit.
    """
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    saved = []
    for module, section, buffer in rotary_buffers(model):
        params = rope_sections(config)[section]
        kind = params.get("rope_type")
        if kind not in rope_math.LENGTH_DEPENDENT_TYPES:
            continue
        prefix = f"{section}_" if section else ""
        scaling_attr = f"{prefix}attention_scaling" if section else "attention_scaling"
        values, scaling = getattr(module, f"{prefix}original_inv_freq"), getattr(module, scaling_attr)
        # growth: seq_len = max(position_ids) + 1
        if kind == "dynamic" and length > module.original_max_seq_len:
            seq_len = torch.tensor(length, dtype=torch.long, device=buffer.device)
            values, scaling = ROPE_INIT_FUNCTIONS[kind](config, buffer.device, seq_len=seq_len,
                                                        layer_type=section)
        elif kind == "longrope" and length > params["original_max_position_embeddings"]:  # the long factors
            values, _ = ROPE_INIT_FUNCTIONS[kind](config, buffer.device,
                                                  seq_len=params["original_max_position_embeddings"] + 1,
                                                  layer_type=section)
        expected, want_scaling = expected_inv_freq(config, section, length)
        got = values.detach().to("cpu", torch.float64)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=2e-6, atol=0) \
                or abs(float(scaling) - want_scaling) > 1e-6 * max(1.0, abs(want_scaling)):
            raise RuntimeError(f"{kind} RoPE at L={length}: transformers gives "
                               f"inv_freq[:3]={got[:3].tolist()} "
                               f"(scaling {float(scaling)}), harness.law.rope_math {expected[:3].tolist()} "
                               f"(scaling {want_scaling})")
        saved.append((module, section, buffer.clone(), copy.copy(module.rope_type),
                      getattr(module, scaling_attr)))
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


def rope_manifest(config, spec: dict[str, Any], law: dict[str, Any], inv_freqs: dict,
                  base_changed: bool) -> dict[str, Any]:
    """The RoPE manifest (docs/design.md); rope_hash covers every RoPE field (not the law inputs) plus the
    inv_freq bytes."""
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
        # a return to the pre-training base counts too: an extended checkpoint was never tuned at it
        "law_assumes_finetune": bool(base_changed and law["tune_len_source"] != "flag"),
    }
    # the law inputs describe the checkpoint's history, not what the model computes: outside the identity
    manifest["rope_hash"] = _rope_hash({k: v for k, v in manifest.items() if k not in LAW_FIELDS}, inv_freqs)
    # the hash of run folders written while law inputs were part of the identity (read, never written anew)
    manifest["rope_hash_v1"] = _rope_hash({k: v for k, v in manifest.items() if k != "rope_hash"}, inv_freqs)
    return manifest


def _rope_hash(fields: dict[str, Any], inv_freqs: dict) -> str:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for key in sorted(inv_freqs, key=str):
        digest.update(inv_freqs[key][0].numpy().tobytes())
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
        raise InputError("--attn flash_attention_2 needs CUDA and the flash-attn package: install it "
                         "(README, GPU) or use --attn sdpa")
    return attn or ("flash_attention_2" if flash_ok else "sdpa")


def pick_dtype(dtype: str | None, device: str) -> str:
    if dtype in (None, "auto"):
        return "float32" if device == "cpu" else "bfloat16"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise InputError(f"unknown --dtype {dtype!r}: use float32, bfloat16, float16 or auto")
    return dtype


def describe(model_id: str, override: RopeOverride | None = None, revision: str | None = None,
             trust_remote_code: bool = False) -> Checkpoint:
    """Config -> law inputs -> override applied to a copy -> fingerprints, without weights or tokenizer."""
    override = override or RopeOverride()
    path = resolve_model_path(model_id)
    config = load_config(model_id, revision, trust_remote_code)
    law = law_inputs(config, override)
    overridden = copy.deepcopy(config)
    spec = apply_override(overridden, override)  # validates the override first
    own, fingerprint = model_fingerprints(path, [config, overridden], revision)
    return Checkpoint(model_id, path, revision, trust_remote_code, override, overridden, spec, law,
                      fingerprint, own, source_config=config)


def load(model: str | Checkpoint, override: RopeOverride | None = None, *, dtype: str | None = None,
         device: str | None = None, attn: str | None = None, revision: str | None = None,
         trust_remote_code: bool = False) -> Loaded:
    """Checkpoint (described here from a model id when not given) -> model (weights in `dtype`, RoPE
    float32) -> verified manifest."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    checkpoint = model if isinstance(model, Checkpoint) else describe(model, override, revision,
                                                                      trust_remote_code)
    model_id, path = checkpoint.model_id, checkpoint.path
    config = copy.deepcopy(checkpoint.config)  # from_pretrained may annotate it: the described one stays
    revision, trust_remote_code = checkpoint.revision, checkpoint.trust_remote_code
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    chosen = attn
    attn = pick_attn(attn, device)
    placement = {"device_map": "auto"} if device == "auto" else {}

    weights = str(gguf.materialised(path)) if gguf.is_gguf(path) else path

    def build(implementation: str):
        return AutoModelForCausalLM.from_pretrained(
            weights, config=config, dtype=getattr(torch, dtype), attn_implementation=implementation,
            revision=revision, trust_remote_code=trust_remote_code, **placement)

    try:
        try:
            model = build(attn)
        except ValueError as exc:  # e.g. Gemma2 has no sdpa path: an automatic choice falls back to eager
            if chosen is not None or "attention implementation" not in str(exc):
                raise
            attn = "eager"
            model = build(attn)
        tokenizer = checkpoint.tokenizer or load_tokenizer(model_id, revision, trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load model {model_id!r} ({one_line(exc, 160)}): check the path/hub id, "
                         "network, and --attn") from None
    if device != "auto":
        model.to(device)  # moves; never casts (inv_freq must stay float32)
    model.eval()
    inv_freqs = verify_rope(model, config)
    manifest = rope_manifest(config, checkpoint.rope_spec, checkpoint.law, inv_freqs,
                             checkpoint.override.changes_base())
    manifest.update(weights_source(path))  # where the weights came from: no RoPE fact, so not in rope_hash
    return Loaded(model, tokenizer, config, manifest, checkpoint.fingerprint, device, dtype, attn)


def default_label(model_id: str, manifest: dict[str, Any]) -> str:
    """<model basename>:<rope_type>:<theta>[:f<factor>] (docs/design.md)."""
    base = model_id.rstrip("/").rsplit("/", 1)[-1]
    theta = manifest["rope_params"].get("ntk_base_theta", manifest["rope_theta"])
    label = f"{base}:{manifest['rope_type']}:{_short(theta)}"
    factor = manifest["rope_params"].get("factor")
    label = f"{label}:f{_short(factor)}" if factor is not None else label
    for key, value in sorted(manifest["rope_params"].items()):  # another layer type's base (Gemma 3's local)
        if key.endswith(".rope_theta"):
            section = key.partition(".")[0]
            label += f":{'local' if 'sliding' in section else section}{_short(value)}"
    return label


def _short(x: float) -> str:
    """`:g` (10000, 1e+06: the labels of existing runs) with just enough digits to tell two values apart:
    plain `:g` gave 1.0000001 the label of 1 and so merged two settings into one."""
    return next((text for p in range(6, 18) if float(text := f"{x:.{p}g}") == x), repr(x))
