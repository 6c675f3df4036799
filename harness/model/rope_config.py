"""A model's RoPE configuration: read it, check an override, apply it, and the law's inputs.

Pure config work (no weights, no torch): `apply_override` edits the loaded AutoConfig before the model
is built; `harness.model.models` builds and verifies. RoPE lives in `config.rope_parameters` in transformers
5.x (nested per layer type for Gemma3); see docs/design.md for the pitfalls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from harness.core.errors import InputError, one_line
from harness.law import rope_math
from harness.law.liu import check_inputs as check_law_inputs
from harness.model.checkpoints import known_history

ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope")
_USED_KEYS: dict[str, set[str]] = {  # scaling keys each rope type reads (transformers' rope init functions)
    "default": set(), "linear": {"factor"}, "ntk": {"factor"}, "dynamic": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "attention_factor", "truncate"},
    "llama3": {"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"},
    "longrope": {"factor", "original_max_position_embeddings", "short_factor", "long_factor",
                 "attention_factor"},
}
# keys that belong to one rope type and must not leak into another
_TYPE_KEYS = set().union(*_USED_KEYS.values())
# read by every rope type (transformers' rope validation also lists partial_rotary_factor)
_COMMON_KEYS = {"rope_theta"}
# transformers computes base**(i/d) in float32: past ~1e25 its rounding exceeds verify_rope's tolerance
# for some rotary dims, and near 1e38 the frequencies underflow to 0; 1e20 leaves a wide margin above
# any real base.
MAX_THETA = 1e20
_F32_TINY, _F32_MAX = 1.1754943508222875e-38, 3.4028234663852886e38  # float32's normal range
LAW_SECTION = "full_attention"  # Gemma3-style per-layer-type RoPE: the law reads the global layers


@dataclass(frozen=True)
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
        """Anything about the rotary embedding differs from the checkpoint's."""
        return any(v is not None for v in (self.theta, self.rope_type, self.factor)) or bool(self.params)

    def changes_base(self) -> bool:
        """The base the model evaluates with differs from its checkpoint's (static NTK changes it too); a
        scaling such as YaRN or PI leaves the base as fine-tuned."""
        return self.theta is not None or self.rope_type == "ntk"


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
                         "rope-harness evaluates RoPE models only "
                         "(Llama, Mistral, Qwen, Gemma, Phi3, GPT-NeoX, ...)")
    if all(isinstance(v, dict) or v is None for v in params.values()) and "rope_theta" not in params:
        return {k: v for k, v in params.items() if v is not None}
    return {None: params}


def law_section(config) -> str | None:
    sections = rope_sections(config)
    return LAW_SECTION if LAW_SECTION in sections else next(iter(sections))


def hybrid_layers(config) -> dict[str, Any] | None:
    """Per-layer-type RoPE (Gemma 3): the law's section and the others, each with its layer count, base, rope
    type and attention window (sliding sections: `sliding_window`); None where one RoPE serves every layer."""
    sections = rope_sections(config)
    if None in sections:
        return None
    text = text_config(config)
    types = list(getattr(text, "layer_types", None) or [])
    own = law_section(config)

    def entry(name: str) -> dict[str, Any]:
        params = sections[name]
        window = getattr(text, "sliding_window", None) if "sliding" in name else None
        return {"section": name, "layers": types.count(name), "rope_theta": float(params["rope_theta"]),
                "rope_type": params.get("rope_type", "default"), "window": window}

    return {"layers": len(types), "law": entry(own),
            "local": [entry(name) for name in sections if name != own]}


def rotary_dim(config, section: str | None = None) -> int:
    text = text_config(config)
    params = rope_sections(config)[section]
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    partial = params.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", None) or 1.0)
    return int(head_dim * partial)


def max_positions(config) -> int:
    return int(text_config(config).max_position_embeddings)


def _law_entry(config) -> dict[str, Any]:
    entry = (getattr(text_config(config), "rope_harness_law", None)
             or getattr(config, "rope_harness_law", None))
    return dict(entry) if isinstance(entry, dict) else {}


def _identifying_values(config) -> dict[str, Any]:
    """The config values harness.model.checkpoints matches a known checkpoint by."""
    text = text_config(config)
    params = rope_sections(config)[law_section(config)]
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings")
    return {**{k: getattr(text, k, None) for k in keys}, "rope_theta": params.get("rope_theta"),
            "rope_type": params.get("rope_type", "default")}


def law_inputs(config, override: RopeOverride | None = None) -> dict[str, Any]:
    """pretrain_base / train_len / tune_len / rotary_dim of the checkpoint, each with its source: a flag, the
    config's `rope_harness_law`, a known checkpoint (harness.model.checkpoints), else assumed from the config.

    Must be called on the config *before* the override is applied (pretrain_base is the checkpoint's).
    """
    override = override or RopeOverride()
    _check_override(override)  # the flags' own messages come before the law's checks of the resolved values
    section = law_section(config)
    params = rope_sections(config)[section]
    entry = _law_entry(config)
    text = text_config(config)
    known = known_history(_identifying_values(config))

    def pick(flag, key, fallbacks):
        if flag is not None:
            return flag, "flag"
        if entry.get(key) is not None:
            return entry[key], "rope_harness_law"
        if known is not None:
            return getattr(known, key), f"known:{known.name}"
        for value, source in fallbacks:
            if value is not None:
                return value, source
        return None, None

    base, base_src = pick(override.pretrain_base, "pretrain_base", [(params.get("rope_theta"), "rope_theta")])
    original = (params.get("original_max_position_embeddings")
                or getattr(text, "original_max_position_embeddings", None))
    train, train_src = pick(override.train_len, "train_len",
                            [(original, "original_max_position_embeddings"),
                             (text.max_position_embeddings, "max_position_embeddings")])
    tune, tune_src = pick(override.tune_len, "tune_len", [(train, "train_len")])
    # compare the resolved values: a config's train_len can meet a --tune-len flag
    check_law_inputs(train, tune, base)
    return {"rotary_dim": rotary_dim(config, section), "pretrain_base": float(base),
            "pretrain_base_source": base_src,
            "train_len": int(train), "train_len_source": train_src,
            "tune_len": int(tune), "tune_len_source": tune_src}


def is_length_dependent(config) -> bool:
    return any(p.get("rope_type") in rope_math.LENGTH_DEPENDENT_TYPES for p in rope_sections(config).values())


def _check_override(override: RopeOverride) -> None:
    if override.rope_type is not None and override.rope_type not in ROPE_TYPES:
        raise InputError(f"unknown --rope-type {override.rope_type!r}: use one of {', '.join(ROPE_TYPES)}")
    if override.theta is not None and not override.theta > 1:
        raise InputError(f"--rope-theta must be > 1 (got {override.theta:g}): "
                         "pass a base such as 10000 or 1e6")
    if override.factor is not None and not override.factor >= 1:
        raise InputError(f"--rope-factor must be >= 1 (got {override.factor:g}): "
                         "a factor stretches the context, e.g. 4")
    for name in ("train_len", "tune_len"):
        value = getattr(override, name)
        if value is not None and value < 7:
            raise InputError(f"--{name.replace('_', '-')} must be a length above 2*pi (got {value}): "
                             "pass the training length in tokens")


def _check_keys_used(override: RopeOverride, kind: str, section: str | None, config) -> None:
    """A key the rope type never reads (a scaling key of another type, or a typo) would be recorded (label,
    hash) but change nothing."""
    asked = set(override.params) | ({"factor"} if override.factor is not None else set())
    # apply_override sets rope_type from --rope-type: a param would be overwritten
    if asked & {"rope_type", "type"}:
        raise InputError("--rope-param rope_type is not read: "
                         "pass --rope-type TYPE (rope_type in a suite) instead")
    # Llama ignores it (verify_rope fails); GPT-NeoX obeys, the manifest's rotary_dim not
    if "partial_rotary_factor" in asked:
        raise InputError("--rope-param partial_rotary_factor changes which head dimensions rotate "
                         "(the architecture), "
                         "not a RoPE setting: drop it")
    if kind in _USED_KEYS:  # a type unknown here is not judged
        valid = _COMMON_KEYS | _USED_KEYS[kind] | set(
            getattr(text_config(config), "ignore_keys_at_rope_validation", None) or ())
        unknown = sorted(asked - valid - _TYPE_KEYS)
        if unknown:
            raise InputError(f"unknown RoPE parameter {', '.join(unknown)}: rope_type {kind} reads "
                             f"{', '.join(sorted(valid))}; fix the name or drop the --rope-param")
    # a type unknown here is not judged
    ignored = sorted((asked & _TYPE_KEYS) - _USED_KEYS.get(kind, _TYPE_KEYS))
    if ignored:
        raise InputError(f"rope_type {kind} ignores {', '.join(ignored)}: "
                         "add --rope-type with a scaling type that "
                         f"uses it ({', '.join(t for t in ROPE_TYPES if set(ignored) <= _USED_KEYS[t])}) "
                         "or drop it")
    # transformers reads it from the top level
    if section is not None and override.params.get("truncate") is False:
        raise InputError("--rope-param truncate=false is ignored by transformers "
                         "for per-layer-type RoPE (Gemma3): "
                         "drop it")


def _section_params(override: RopeOverride, config, own: str | None) -> dict[str, dict[str, Any]]:
    """`--rope-param SECTION.rope_theta=B`: the base of another layer type (Gemma 3's sliding_attention
    layers), changed only when named so; every other override goes to the law's section. {section: params}"""
    named = {key: value for key, value in override.params.items() if "." in key}
    sections = rope_sections(config)
    out: dict[str, dict[str, Any]] = {}
    for key, value in named.items():
        section, _, name = key.partition(".")
        if own is None:
            raise InputError(f"--rope-param {key}: this model has one RoPE for all its layers, with no layer "
                             f"types to name: drop the {section + '.'!r} prefix")
        if section == own:
            raise InputError(f"--rope-param {key}: {own} is the layer type every override already changes: "
                             f"pass --rope-theta (or the key without the prefix) instead")
        if section not in sections:
            raise InputError(f"--rope-param {key}: the model has no layer type {section!r}: its RoPE layer "
                             f"types are {', '.join(str(s) for s in sections)}")
        if name != "rope_theta":
            raise InputError(f"--rope-param {key}: only the base of another layer type can change: pass "
                             f"--rope-param {section}.rope_theta=B")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 < value <= MAX_THETA:
            raise InputError(f"--rope-param {key} must be a base > 1 and at most {MAX_THETA:g}, where "
                             f"float32 RoPE frequencies keep their precision (got {value!r}): "
                             f"e.g. {section}.rope_theta=1e5")
        out.setdefault(section, {})[name] = float(value)
    return out


def _check_frequencies(params: dict[str, Any], kind: str, dim: int, mpe: int) -> None:
    """The model keeps inv_freq in float32: a base or factor it cannot represent would fail verify_rope with a
    traceback (or overflow before it) instead of naming the flag to change."""
    theta, flags = params["rope_theta"], "--rope-theta or --rope-factor" if kind == "ntk" else "--rope-theta"
    asked = (f"rope_type {kind}, rope_theta {theta!r}"
             + (f", factor {params['factor']!r}" if "factor" in params else ""))
    if not (isinstance(theta, (int, float)) and math.isfinite(theta) and theta <= MAX_THETA):
        what = "the effective NTK base b*s^(d/(d-2))" if kind == "ntk" else "rope_theta"
        raise InputError(f"{what} {theta!r} is above {MAX_THETA:g}, "
                         "where float32 RoPE frequencies lose their "
                         f"precision: pass a smaller {flags}")
    if kind not in _USED_KEYS:  # rope_math knows only these; verify_rope names any other
        return
    try:
        values, _ = rope_math.inv_freq(params, dim, mpe)
    except (ArithmeticError, ValueError) as exc:
        raise InputError(f"{asked} gives no RoPE frequencies ({one_line(exc, 80)}): "
                         "check --rope-factor and the "
                         "--rope-param values") from None
    if not all(_F32_TINY <= v <= _F32_MAX for v in values):
        raise InputError(f"{asked} gives RoPE frequencies outside float32's range ({min(values):g} to "
                         f"{max(values):g}): pass a smaller --rope-factor or fix the --rope-param values")


def apply_override(config, override: RopeOverride) -> dict[str, Any]:
    """Edit the config's RoPE parameters in place (before the model is built); return the spec applied.

    Static NTK (`ntk`) becomes default RoPE with theta b*s^(d/(d-2)); for per-layer-type configs
    (Gemma3) the override goes to the global-attention layers, and another layer type's base changes only
    when named (`--rope-param sliding_attention.rope_theta=B`). Returns the user-facing spec (rope_type as
    asked, e.g. "ntk", with its factor, and any named section's key) for the manifest.
    """
    _check_override(override)
    section = law_section(config)
    sections = rope_sections(config)
    current = sections[section]
    kind = override.rope_type or current.get("rope_type", "default")
    others = _section_params(override, config, section)
    named = {key: value for key, value in override.params.items() if "." in key}
    override = replace(override, params={k: v for k, v in override.params.items() if k not in named})
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
        # the context the checkpoint was last trained at: the factor stretches that window
        new.setdefault("original_max_position_embeddings", law_inputs(config).get("tune_len") or mpe)
    if kind == "llama3":
        new.setdefault("low_freq_factor", 1.0)
        new.setdefault("high_freq_factor", 4.0)
    if kind == "longrope":
        for key in ("short_factor", "long_factor"):
            factors = new.get(key)
            if not isinstance(factors, list) or len(factors) != dim // 2:
                raise InputError(f"--rope-type longrope needs {key} as a list of {dim // 2} numbers: "
                                 f"add --rope-param {key}=[...] (JSON)")
    spec = dict(new, rope_type=kind, **{k: float(v) for k, v in named.items()})
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
        if ("original_max_position_embeddings" in override.params
                and hasattr(text, "original_max_position_embeddings")):
            # Phi3: top level wins
            text.original_max_position_embeddings = new["original_max_position_embeddings"]
    else:
        text.rope_parameters[section] = new
    for other, params in others.items():
        changed = dict(sections[other], **params)
        _check_frequencies(changed, changed.get("rope_type", "default"), rotary_dim(config, other), mpe)
        text.rope_parameters[other] = changed
    return spec
