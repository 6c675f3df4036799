"""The RoPE extrapolation scaling law (Liu et al., "Scaling Laws of RoPE-based Extrapolation", ICLR 2024).

Pure arithmetic, so anyone can audit it against the paper: no torch, no transformers. Notation as in
docs/design.md: d = rotary dimensions per head, b0 = pre-training base, beta = the base used for
fine-tuning at length T_tune (default T_tune = T_train). RoPE pair n (0 <= n < d/2) turns at angle rate
b^(-2n/d), so its period is 2*pi*b^(2n/d): a pair "saw a full period" in training when that period fits
in the training length.

Regimes of a setting:
- "larger-base"    beta > beta0: limit 2*pi*beta^(d_extra/d), the period of the first dimension that never
                   completed a period in pre-training (d_extra from T_train and b0).
- "tuning-bounded" beta3 <= beta <= beta0: limit T_tune (a lower bound: small bases degrade slowly past
                   it); the critical dimension grows to d'_extra = 2*ceil((d/2)*log_beta(T_tune/2pi)).
- "unbounded"      beta < beta3 = T_tune/2pi: every dimension completes a period within T_tune, so the law
                   gives no upper bound (limit None) and the critical dimension is all of d.
- "not-covered"    RoPE variants the law does not describe (linear/PI, yarn, llama3, longrope, dynamic):
                   no prediction. Static NTK is covered once mapped to its effective base
                   (harness.law.rope_math.ntk_theta); pass that base with rope_type="ntk".

A second, independent limit (Men et al., "Base of RoPE Bounds Context Length", NeurIPS 2024): with
theta_n = b^(-2n/d), B(m) = sum_n cos(m*theta_n) is what a query gains, on average, from a similar key at
distance m over a random one; past the first m with B(m) < 0 the model cannot tell them apart. See
harness.law.men.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.core.errors import InputError

REGIMES = ("larger-base", "tuning-bounded", "unbounded", "not-covered")
COVERED_ROPE_TYPES = ("default", "ntk")

# ceil() of a value that is mathematically an integer can land one step too high through float noise
# (e.g. log_beta(T/2pi) == 1 exactly at beta == beta3); this slack is far below any real fractional part.
_CEIL_SLACK = 1e-9
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class Prediction:
    """What the law says about one base setting; `extrapolation_limit` is None when there is no bound
    ("unbounded") or no prediction ("not-covered")."""

    base: float
    regime: str
    critical_dim: int | None
    extrapolation_limit: float | None


# --- validation: one-line messages that name the fix --------------------------------------------------

def _check_rotary_dim(rotary_dim: int) -> int:
    # Any integer type (int, numpy/torch integers) via __index__; bools and floats are refused.
    integral = not isinstance(rotary_dim, bool) and hasattr(type(rotary_dim), "__index__")
    if not integral or rotary_dim.__index__() <= 0 or rotary_dim.__index__() % 2:
        raise InputError(
            f"rotary dim {rotary_dim!r} is not a positive even integer: pass the rotary dimensions per head "
            "(head_dim x partial_rotary_factor), e.g. --head-dim 128"
        )
    return rotary_dim.__index__()


def _check_number(value: float, what: str, example: str = "4096") -> float:
    """`example` is a value that fits the argument (a length, a base): the message names the fix."""
    number = None
    if not isinstance(value, (bool, str, bytes)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
    if number is None or not math.isfinite(number):
        raise InputError(f"{what} {value!r} is not a finite number: pass a plain number such as {example}")
    return number


def _check_length(length: float, what: str) -> float:
    length = _check_number(length, what)
    if length <= _TWO_PI:
        raise InputError(
            f"{what} {length:g} must exceed 2*pi (about 6.28) tokens for the law to apply: pass a length "
            "in tokens such as 4096"
        )
    return length


def _check_base(base: float, what: str) -> float:
    base = _check_number(base, what, "1e6")
    if base <= 1.0:
        raise InputError(f"{what} {base:g} must be greater than 1: "
                         "pass a RoPE base (theta) such as 10000 or 1e6")
    return base


def _check_lengths(train_len: float, tune_len: float | None) -> tuple[float, float]:
    """tune_len defaults to train_len. Tuning shorter than pre-training is refused: the law's derivation
    assumes the tuned model saw at least the pre-training length (otherwise T_tune would not bound it)."""
    train = _check_length(train_len, "train length")
    tune = train if tune_len is None else _check_length(tune_len, "tune length")
    if tune < train:
        raise InputError(
            f"tune length {tune:g} is shorter than train length {train:g}: the law assumes fine-tuning at or "
            "beyond the pre-training length; pass --tune-len >= --train-len or omit it"
        )
    return train, tune


def check_inputs(train_len: float, tune_len: float | None = None, pretrain_base: float = 10000.0) -> None:
    """Refuse law inputs the law would refuse later, for callers that record them first (`rope-harness run`):
    a run whose records carry unusable law inputs would only be found out in the report."""
    _check_lengths(train_len, tune_len)
    _check_base(pretrain_base, "pre-training base")


def _log(x: float, base: float) -> float:
    return math.log(x) / math.log(base)


def _dims_with_full_period(rotary_dim: int, length: float, base: float) -> int:
    """2*ceil((d/2)*log_base(length/2pi)), capped at d: how many dimensions completed a period in `length`."""
    half = rotary_dim / 2 * _log(length / _TWO_PI, base)
    return min(rotary_dim, 2 * math.ceil(half - _CEIL_SLACK))


# --- the law ---------------------------------------------------------------------------------------------

def critical_dim(rotary_dim: int, train_len: float, pretrain_base: float = 10000.0) -> int:
    """d_extra: the first d_extra dimensions saw a full period in pre-training, the rest did not.
    LLaMA2 (d=128, T_train=4096, b0=1e4): 92."""
    d = _check_rotary_dim(rotary_dim)
    train = _check_length(train_len, "train length")
    b0 = _check_base(pretrain_base, "pre-training base")
    return _dims_with_full_period(d, train, b0)


def critical_base(train_len: float, tune_len: float | None = None, pretrain_base: float = 10000.0) -> float:
    """beta0 = b0^(log_{T_train/2pi}(T_tune/2pi)): the base whose full-period dimensions at T_tune are the
    same as b0's at T_train. Exactly b0 when T_tune == T_train."""
    train, tune = _check_lengths(train_len, tune_len)
    b0 = _check_base(pretrain_base, "pre-training base")
    if tune == train:
        return b0
    return b0 ** _log(tune / _TWO_PI, train / _TWO_PI)


def small_base_thresholds(tune_len: float) -> dict[str, float]:
    """beta1 = 2T/pi, beta2 = T/pi, beta3 = T/(2pi) for the tuning length T (4096: ~2608, 1304, 652).
    Below beta3 every dimension completes a period within T."""
    tune = _check_length(tune_len, "tune length")
    return {"beta1": 2 * tune / math.pi, "beta2": tune / math.pi, "beta3": tune / _TWO_PI}


def predict(
    rotary_dim: int,
    train_len: float,
    base: float,
    tune_len: float | None = None,
    pretrain_base: float = 10000.0,
    rope_type: str = "default",
) -> Prediction:
    """Regime, critical dimension and extrapolation limit of a model tuned with `base` at `tune_len`.

    rope_type "default" or "ntk" (then `base` is already the effective base b*s^(d/(d-2))) is covered;
    any other type gets regime "not-covered" and no numbers. The limit is non-decreasing in beta from
    beta3 up, with a jump at beta0 (LLaMA2: 4096 at beta0, ~4712 just above it).
    """
    d = _check_rotary_dim(rotary_dim)
    train, tune = _check_lengths(train_len, tune_len)
    b0 = _check_base(pretrain_base, "pre-training base")
    beta = _check_base(base, "base")
    if not isinstance(rope_type, str):
        raise InputError(f"rope type {rope_type!r} is not a name: pass e.g. 'default' or 'ntk'")
    if rope_type.lower() not in COVERED_ROPE_TYPES:
        return Prediction(beta, "not-covered", None, None)

    beta0 = critical_base(train, tune, b0)
    if beta > beta0:
        d_extra = _dims_with_full_period(d, train, b0)
        return Prediction(beta, "larger-base", d_extra, _larger_base_limit(d, d_extra, tune, beta))
    if beta >= tune / _TWO_PI:
        return Prediction(beta, "tuning-bounded", _dims_with_full_period(d, tune, beta), tune)
    # Every dimension completes a period within T_tune: all d dimensions are "seen", so critical dim = d.
    return Prediction(beta, "unbounded", d, None)


def boundary_limits(
    rotary_dim: int,
    train_len: float,
    tune_len: float | None = None,
    pretrain_base: float = 10000.0,
) -> tuple[float, float]:
    """Liu's limit on both sides of the critical base beta0: T_tune at beta = beta0 (tuning-bounded, a lower
    bound) and 2*pi*beta0^(d_extra/d) just above it (the larger-base branch as beta falls to beta0). A model
    tuned at exactly beta0, as one pre-trained with its own base is (Gemma 3: d=256, T_train=32,768,
    b0=1e6: 32,768 and 35,333), is predicted to break between the two."""
    d = _check_rotary_dim(rotary_dim)
    train, tune = _check_lengths(train_len, tune_len)
    b0 = _check_base(pretrain_base, "pre-training base")
    beta0 = critical_base(train, tune, b0)
    return tune, _larger_base_limit(d, _dims_with_full_period(d, train, b0), tune, beta0)


def _larger_base_limit(d: int, d_extra: int, tune: float, beta: float) -> float:
    """Liu's larger-base branch, 2*pi*beta^(d_extra/d), never below T_tune, where the model was tuned. The
    floor only matters when d_extra is capped at d (b0 <= T_train/2pi); otherwise 2*pi*beta^(d_extra/d) >
    T_tune already for every beta > beta0."""
    return max(tune, _TWO_PI * beta ** (d_extra / d))


def base_for_target(
    target_len: float,
    rotary_dim: int,
    train_len: float,
    tune_len: float | None = None,
    pretrain_base: float = 10000.0,
) -> float:
    """Inverse of the larger-base limit: beta = (L/2pi)^(d/d_extra) when that exceeds beta0, else beta0.

    beta0 is then the infimum, not a base that reaches L: the limit jumps at beta0 (T_tune at beta0,
    2*pi*beta0^(d_extra/d) just above), so any base just above beta0 reaches every L up to that jump.
    """
    target = _check_length(target_len, "target length")
    d = _check_rotary_dim(rotary_dim)
    train, tune = _check_lengths(train_len, tune_len)
    b0 = _check_base(pretrain_base, "pre-training base")
    beta0 = critical_base(train, tune, b0)
    d_extra = _dims_with_full_period(d, train, b0)
    beta = (target / _TWO_PI) ** (d / d_extra)
    return beta if beta > beta0 else beta0
