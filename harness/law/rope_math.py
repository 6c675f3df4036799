"""RoPE inverse frequencies computed from a parameter dict, independently of transformers.

Two jobs: verify that an override really reached the built model (compare against its buffers), and
fix the frequencies of length-dependent RoPE (dynamic NTK, LongRoPE) for one evaluation length. Plain
float64 arithmetic; the caller converts to float32 tensors.
"""

from __future__ import annotations

import math
from typing import Any

COVERED_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")
LENGTH_DEPENDENT_TYPES = ("dynamic", "longrope")


def ntk_theta(theta: float, factor: float, rotary_dim: int) -> float:
    """Static NTK-aware scaling = default RoPE with base b * s^(d/(d-2)); inf past float64 (callers refuse
    it)."""
    try:
        return theta * factor ** (rotary_dim / (rotary_dim - 2))
    except OverflowError:
        return math.inf


def dynamic_theta(theta: float, factor: float, rotary_dim: int, length: int, max_positions: int) -> float:
    """The base dynamic NTK uses on a fresh pass of `length` tokens (docs/design.md, pitfalls)."""
    scale = factor * max(length, max_positions) / max_positions - (factor - 1)
    return theta * scale ** (rotary_dim / (rotary_dim - 2))


def _default(theta: float, dim: int) -> list[float]:
    return [1.0 / theta ** (i / dim) for i in range(0, dim, 2)]


def _yarn(params: dict[str, Any], dim: int, max_positions: int) -> tuple[list[float], float]:
    theta = params["rope_theta"]
    original = params.get("original_max_position_embeddings") or max_positions
    factor = params.get("factor") or max_positions / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = params.get("attention_factor")
    if attention is None:
        m, m_all = params.get("mscale"), params.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(params.get("beta_fast") or 32), correction_dim(params.get("beta_slow") or 1)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    inv = []
    for j, base_inv in enumerate(_default(theta, dim)):
        keep = 1.0 - min(max((j - low) / (high - low), 0.0), 1.0)  # 1 = extrapolate (high frequency)
        inv.append(base_inv / factor * (1 - keep) + base_inv * keep)
    return inv, float(attention)


def _llama3(params: dict[str, Any], dim: int) -> list[float]:
    factor, low_f, high_f = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    old_len = params["original_max_position_embeddings"]
    out = []
    for f in _default(params["rope_theta"], dim):
        wavelen = 2 * math.pi / f
        if wavelen < old_len / high_f:
            out.append(f)
        elif wavelen > old_len / low_f:
            out.append(f / factor)
        else:
            smooth = (old_len / wavelen - low_f) / (high_f - low_f)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out


def _longrope(params: dict[str, Any], dim: int, max_positions: int,
              length: int | None) -> tuple[list[float], float]:
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or max_positions / original
    attention = params.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    ext = params["long_factor"] if length and length > original else params["short_factor"]
    return [f / e for f, e in zip(_default(params["rope_theta"], dim), ext, strict=True)], float(attention)


def inv_freq(params: dict[str, Any], rotary_dim: int, max_positions: int,
             length: int | None = None) -> tuple[list[float], float]:
    """(inverse frequencies, attention scaling) for one RoPE section.

    `length` matters only for length-dependent types; None means "as built" (no evaluation length yet).
    """
    kind = params.get("rope_type", "default")
    theta = params["rope_theta"]
    if kind == "default":
        return _default(theta, rotary_dim), 1.0
    if kind == "linear":
        return [f / params["factor"] for f in _default(theta, rotary_dim)], 1.0
    if kind == "dynamic":
        return _default(dynamic_theta(theta, params["factor"], rotary_dim, length or max_positions,
                                      max_positions), rotary_dim), 1.0
    if kind == "yarn":
        return _yarn(params, rotary_dim, max_positions)
    if kind == "llama3":
        return _llama3(params, rotary_dim), 1.0
    if kind == "longrope":
        return _longrope(params, rotary_dim, max_positions, length)
    raise ValueError(f"unsupported rope_type {kind!r}")
