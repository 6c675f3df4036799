"""Every setting's law block: both RoPE limits from its law inputs, and the critical dimension they imply.

- Liu et al. (ICLR 2024, harness/law/liu.py): regime, critical dimension d_extra and extrapolation limit from
  (rotary_dim, train_len, tune_len, pretrain_base, rope_theta, rope_type).
- Men et al. (NeurIPS 2024, harness/law/men.py): the retrieval bound of the evaluated base, the first
  distance m with B(m) = sum_n cos(m b^(-2n/d)) < 0. Computed for the rope types whose frequencies are
  b^(-2n/d) (default; static NTK through its effective base, which is what the records' rope_theta holds).
- The measured critical dimension: Liu's larger-base limit T = 2 pi beta^(d_extra/d) solved for the
  dimension, without the ceiling: d_measured = d ln(T_measured / 2 pi) / ln(beta). A censored measured
  length (a lower bound) gives a lower bound on d_measured, since d_measured grows with T.
Pure arithmetic on one setting's values (no pandas): analysis.py puts the numbers into summary.csv.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from harness.core.errors import InputError
from harness.law import liu as law
from harness.report.base import fmt_base

__all__ = ["LawBlock", "law_group", "measured_critical_dim", "predict_for", "retrieval_bound_of"]


@dataclass(frozen=True)
class LawBlock:
    """Both limits of one setting. `prediction` is None (with `note`) when Liu's law inputs are unusable;
    `retrieval_bound` is None when not computed (see `note`) or beyond the search cap."""

    prediction: law.Prediction | None
    retrieval_bound: int | None
    critical_base: float | None = None  # beta0 (Liu): above it the larger-base regime
    note: str = ""

    @property
    def regime(self) -> str:
        return self.prediction.regime if self.prediction is not None else ""

    @property
    def critical_dim(self) -> int | None:
        return self.prediction.critical_dim if self.prediction is not None else None

    @property
    def predicted_limit(self) -> float | None:
        return self.prediction.extrapolation_limit if self.prediction is not None else None


def _value(row: Any, key: str):
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


@functools.lru_cache(maxsize=4096)
def retrieval_bound_of(base: float, rotary_dim: int) -> int | None:
    """retrieval_bound(base, rotary_dim), cached: the report asks for the same base once per definition, and
    the limit-vs-base table for a log grid of bases."""
    from harness.law.men import retrieval_bound

    return retrieval_bound(float(base), int(rotary_dim))


def _covered(row: Any) -> bool:
    return str(_value(row, "rope_type") or "default").lower() in law.COVERED_ROPE_TYPES


def predict_for(row: Any) -> LawBlock:
    """The law block of a setting's law inputs (a dict or a pandas row of record columns)."""
    notes = []
    prediction = beta0 = None
    rotary = _value(row, "rotary_dim")
    try:
        prediction = law.predict(
            rotary_dim=int(rotary) if rotary is not None else None, train_len=_value(row, "train_len"),
            base=_value(row, "rope_theta"), tune_len=_value(row, "tune_len"),
            pretrain_base=_value(row, "pretrain_base") or 10000.0,
            rope_type=str(_value(row, "rope_type") or "default"))
        if prediction.regime != "not-covered":
            beta0 = law.critical_base(_value(row, "train_len"), _value(row, "tune_len"),
                                      _value(row, "pretrain_base") or 10000.0)
    except (InputError, TypeError, ValueError) as exc:
        notes.append(f"law inputs unusable: {str(exc).splitlines()[0]}")
    bound = None
    if not _covered(row):
        notes.append(f"retrieval bound not computed: rope_type {_value(row, 'rope_type')} does not turn "
                     "pair n at b^(-2n/d)")
    else:
        try:
            bound = retrieval_bound_of(float(_value(row, "rope_theta")), int(rotary))
            if bound is None:
                notes.append("retrieval bound beyond the search cap (2^26 tokens)")
        except (InputError, TypeError, ValueError) as exc:
            if prediction is not None:  # the same bad input is already named once
                notes.append(f"retrieval bound not computed: {str(exc).splitlines()[0]}")
    return LawBlock(prediction, bound, beta0, "; ".join(notes))


def measured_critical_dim(measured: float | None, base: float | None, rotary_dim: int | None) -> float:
    """d ln(T / 2 pi) / ln(beta), the dimension whose period equals the measured limit T (NaN when
    undefined)."""
    try:
        t, beta, d = float(measured), float(base), float(rotary_dim)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(t) and t > 0 and math.isfinite(beta) and beta > 1 and d > 0):
        return math.nan
    return d * math.log(t / (2 * math.pi)) / math.log(beta)


def law_group(row: Any) -> str | None:
    """The settings that share one law-vs-base curve: same rotary_dim, pretrain_base, train_len and tune_len
    (the law's inputs other than the base; the model's name is not one, so the zoo's fine-tuned checkpoints of
    one pre-trained model share a curve). None for rope types the law does not cover or missing inputs."""
    if not _covered(row):
        return None
    values = [_value(row, k) for k in ("rotary_dim", "pretrain_base", "train_len", "tune_len")]
    if values[0] is None or values[2] is None:
        return None
    d, b0, train, tune = values
    tune = train if tune is None else tune
    try:
        return (f"d={int(d)}, b0={fmt_base(b0 if b0 is not None else 10000.0)}, "
                f"T_train={float(train):,.0f}, T_tune={float(tune):,.0f}")
    except (TypeError, ValueError):
        return None
