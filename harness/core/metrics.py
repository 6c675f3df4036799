"""Metric definitions: how a per-length (or per-position) curve becomes a measured extrapolation length.

Pure numerics (numpy only, no pandas, no plotting), so tasks can declare their measures without loading
the report: a `MeasureSpec` says how one definition turns a per-length curve into a length (factor of
the best value, additive delta, or absolute threshold; log-interpolated between grid points; censored
when it never fails), a `PositionMeasureSpec` does the same on per-position loss buckets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

# samples per length below which a measured length is not evidence: the report lists it as insufficient,
# never draws it (report --min-samples); a run asking fewer is warned before it starts
EVIDENCE_SAMPLES = 3


@dataclass(frozen=True)
class MeasureSpec:
    """One definition of a task's measured extrapolation length (a task lists its definitions in
    `Task.measures`, the first being its default; the report reads them from there).

    Aggregate curve: per setting and length, each sample's cells are averaged (over depths, if any), then
    `aggregate = transform(mean over samples)`; transform "exp" turns a mean NLL into ppl@L (docs/design.md).
    Reference: the best aggregate at lengths <= the record column `reference` (default tune_len; train_len
    when that is empty; the shortest grid length when no grid length is that short).
    Pass rule (the first that is set wins: factor, delta, threshold):
    - relative (`factor`): lower-is-better passes while aggregate <= factor * best, higher-is-better while
      aggregate >= best / factor;
    - additive (`delta`, for values in nats such as log-probs): lower-is-better passes while aggregate <=
      best + delta, higher-is-better while aggregate >= best - delta;
    - absolute (`threshold`): passes while aggregate <= threshold (lower-is-better) or >= threshold.
    Measured length: scanning up from the reference's best length, the first failing grid point L1 and
    the passing point L0 before it; the crossing is interpolated linearly in log(length) on the
    aggregate's scale (log of it when `log_interp`, e.g. NLL for ppl). Censored when no grid point past
    the best fails: the largest measured length is reported as a lower bound. Grid lengths where every
    cell failed carry no value and are skipped (the failed cells are listed in the report).
    CI: percentile bootstrap over samples (resampled with replacement, all lengths of a sample together),
    seeded per setting; empty with fewer than two samples.
    `id` names the definition in summary.csv's `measure` column (default: the name, lower case, dashes).
    Chance (`chance` / `chance_column`): a reference at chance means the model never did the task, so no
    length is measured for it, whatever the curve does after.
    """

    metric: str
    name: str
    higher_is_better: bool = False
    transform: str = "identity"
    factor: float | None = 1.5
    threshold: float | None = None
    reference: str = "tune_len"
    log_interp: bool = True
    description: str = ""
    id: str = ""
    delta: float | None = None
    console: str = ""  # the value's name in the run's console table ("": the records' `metric` field)
    # What a model that cannot do the task scores, on the aggregate's scale: a fixed value, or
    # `chance_column`, a record column in the metric's units (mean over the setting's records, then
    # `transform`). A best reference value at chance or worse: no measured length (report/checks.py).
    chance: float | None = None
    chance_column: str = ""

    source: ClassVar[str] = "records"  # where the curve comes from: records*.jsonl (per length)

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"MeasureSpec.transform must be one of {sorted(TRANSFORMS)}")
        if self.factor is None and self.delta is None and self.threshold is None:
            raise ValueError("MeasureSpec needs a factor (relative rule), a delta (additive rule) "
                             "or a threshold "
                             "(absolute rule)")
        if self.delta is not None and not self.delta >= 0:
            raise ValueError("MeasureSpec.delta must be >= 0")

    def aggregate(self, values: Sequence[float]) -> float | None:
        """The measure over samples: its transform of their mean (exp of a mean NLL is ppl@L); None without
        values."""
        if len(values) == 0:
            return None
        return float(TRANSFORMS[self.transform](np.array([np.mean(values)]))[0])

    @property
    def key(self) -> str:
        """Short id of the definition (summary.csv `measure`, the key of FigureContext.analyses)."""
        return self.id or "-".join(self.name.lower().split())

    @property
    def rule(self) -> str:
        """'factor', 'delta' or 'threshold': which pass rule applies."""
        if self.factor is not None:
            return "factor"
        return "delta" if self.delta is not None else "threshold"

    def param(self, factor: float | None = None, delta: float | None = None,
              threshold: float | None = None) -> float | None:
        """The rule's parameter; an override applies only to its own rule (--factor leaves a delta rule
        alone, --threshold a factor rule; which threshold rules take --threshold is the report's choice)."""
        if self.rule == "factor":
            return self.factor if factor is None else factor
        if self.rule == "delta":
            return self.delta if delta is None else delta
        return self.threshold if threshold is None else threshold

    def label(self, factor: float | None = None, delta: float | None = None,
              threshold: float | None = None) -> str:
        """A few words naming the rule and its parameter (figure axis labels)."""
        p = self.param(factor, delta, threshold)
        if self.rule == "factor":
            return f"{self.name}, factor {p:g}"
        if self.rule == "delta":
            return f"{self.name} {'>= best -' if self.higher_is_better else '<= best +'} {p:g}"
        return f"{self.name} {'>=' if self.higher_is_better else '<='} {p:g}"

    def definition(self, factor: float | None = None, delta: float | None = None,
                   threshold: float | None = None) -> str:
        """One line naming the rule, used as the `definition` column of summary.csv."""
        p = self.param(factor, delta, threshold)
        ref = f"best {self.name} at L <= {self.reference}"
        if self.rule == "factor":
            rule = f"{self.name} <= {p:g} x {ref}" if not self.higher_is_better else \
                f"{self.name} >= {ref} / {p:g}"
        elif self.rule == "delta":
            rule = f"{self.name} <= ({ref}) + {p:g}" if not self.higher_is_better else \
                f"{self.name} >= ({ref}) - {p:g}"
        else:
            rule = f"{self.name} {'>=' if self.higher_is_better else '<='} {p:g}"
        scale = f"log({self.name})" if self.log_interp else self.name
        return (f"longest L with {rule}, scanning up from the best length; {scale} interpolated in log(L) "
                f"between grid points; censored at the largest L if it never fails")


@dataclass(frozen=True)
class PositionMeasureSpec(MeasureSpec):
    """A measured length read off the per-position loss curve (positions*.jsonl) instead of per-length
    records.

    Curve: per setting, the position buckets of the longest pass (pos_start, pos_end, mean nll, tokens) of
    each sample; per bucket, the token-weighted mean loss over samples, placed at the bucket's mean position
    x = (pos_start + pos_end - 1) / 2. Smoothed: token-weighted running mean over `window` consecutive buckets
    centred on each (truncated at the ends).
    Reference: the token-weighted mean (unsmoothed) loss of the buckets with x in [reference_from * T, T],
    T = the record column `reference` (tune_len; train_len when empty). Fallbacks: no bucket there but some
    at or below T: the buckets in [reference_from * x', x'], x' the last bucket at or below T; every bucket
    beyond T: the first bucket.
    Measured length: the first bucket beyond T whose smoothed loss exceeds reference + `delta` (nats),
    interpolated linearly in log(position) between it and the bucket before (smoothed values); censored at
    the last bucket's position when none does; undefined (with a note) when no bucket lies beyond T.
    CI: percentile bootstrap over samples (whole samples resampled, the curve recomputed), as MeasureSpec.
    """

    metric: str = "nll"
    name: str = "per-position loss"
    factor: float | None = None
    log_interp: bool = False
    delta: float | None = 0.5
    window: int = 3
    reference_from: float = 0.5

    source: ClassVar[str] = "positions"  # positions*.jsonl (per position bucket of the longest pass)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor is not None or self.delta is None:
            raise ValueError("PositionMeasureSpec uses the additive rule: set delta (nats), not factor")
        if not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError("PositionMeasureSpec.window must be a whole number of buckets >= 1")
        if not 0 <= self.reference_from < 1:
            raise ValueError("PositionMeasureSpec.reference_from must lie in [0, 1)")

    def label(self, factor: float | None = None, delta: float | None = None,
              threshold: float | None = None) -> str:
        return f"{self.name}, reference + {self.param(factor, delta):g} nats"

    def definition(self, factor: float | None = None, delta: float | None = None,
                   threshold: float | None = None) -> str:
        return (f"first token position past {self.reference} where the {self.name} (mean over samples, "
                f"token-weighted running mean over {self.window} position buckets) exceeds its reference + "
                f"{self.param(factor, delta):g} nats; reference = token-weighted mean loss at positions in "
                f"[{self.reference_from:g} x {self.reference}, {self.reference}]; "
                "interpolated in log(position) "
                f"between bucket centres; censored at the last bucket if it never exceeds")


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"identity": lambda x: x, "exp": np.exp}


@dataclass(frozen=True)
class Limit:
    """A measured extrapolation length: NaN value when undefined (no data, or the best point fails)."""

    value: float
    censored: bool
    reference: float
    threshold: float
    note: str = ""
    bracket: tuple[float, float] | None = None  # the grid lengths that pass and fail around the crossing


def _log_crossing(x0: float, x1: float, g0: float, g1: float, gt: float) -> float:
    """Where the segment (log x0, g0) -> (log x1, g1) reaches gt (clipped to the segment)."""
    frac = 0.0 if g1 == g0 else float(np.clip((gt - g0) / (g1 - g0), 0.0, 1.0))
    return math.exp(math.log(x0) + frac * (math.log(x1) - math.log(x0)))


def measured_limit(lengths: Sequence[float], values: Sequence[float], reference_len: float | None,
                   measure: MeasureSpec, factor: float | None = None, delta: float | None = None,
                   threshold: float | None = None) -> Limit:
    """The measured extrapolation length of one aggregate curve (see MeasureSpec for the rule)."""
    lens = np.asarray(lengths, dtype=float)
    vals = np.asarray(values, dtype=float)
    keep = np.isfinite(vals) & np.isfinite(lens) & (lens > 0)
    lens, vals = lens[keep], vals[keep]
    if not len(lens):
        return Limit(math.nan, False, math.nan, math.nan, "no data")
    order = np.argsort(lens, kind="stable")
    lens, vals = lens[order], vals[order]
    note = ""
    ref_len = math.inf if reference_len is None or not np.isfinite(reference_len) else float(reference_len)
    in_ref = lens <= ref_len
    if not in_ref.any():
        in_ref = lens == lens[0]
        note = "no grid length <= reference length; the shortest length is the reference"
    candidates = np.where(in_ref)[0]
    pick = np.argmax if measure.higher_is_better else np.argmin
    best = int(candidates[pick(vals[candidates])])
    ref = float(vals[best])
    p = measure.param(factor, delta, threshold)
    sign = -1.0 if measure.higher_is_better else 1.0
    if measure.rule == "factor":
        thr = ref / p if measure.higher_is_better else ref * p
    elif measure.rule == "delta":
        thr = ref + sign * p
    else:
        thr = float(p)
    passes = vals >= thr if measure.higher_is_better else vals <= thr
    if not passes[best]:
        return Limit(math.nan, False, ref, thr, "the best reference point already fails the threshold")
    fails = np.where(~passes & (np.arange(len(lens)) > best))[0]
    if not len(fails):
        return Limit(float(lens[-1]), True, ref, thr, note)
    j = int(fails[0])
    i = j - 1
    use_log = measure.log_interp and vals[i] > 0 and vals[j] > 0 and thr > 0
    g = np.log if use_log else (lambda x: x)
    return Limit(_log_crossing(lens[i], lens[j], g(vals[i]), g(vals[j]), g(thr)), False, ref, thr, note,
                 (float(lens[i]), float(lens[j])))


def smooth_buckets(loss: np.ndarray, tokens: np.ndarray, window: int) -> np.ndarray:
    """Token-weighted running mean of `window` consecutive buckets centred on each, along the last axis
    (truncated at the ends; buckets without a finite loss or tokens are left out of the means)."""
    loss = np.asarray(loss, dtype=float)
    tokens = np.asarray(tokens, dtype=float)
    ok = np.isfinite(loss) & np.isfinite(tokens) & (tokens > 0)
    num = np.where(ok, loss * np.where(ok, tokens, 0.0), 0.0)
    den = np.where(ok, tokens, 0.0)
    if window <= 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    lo, hi = (window - 1) // 2, window // 2
    pad = [(0, 0)] * (num.ndim - 1) + [(lo + 1, hi)]
    cnum, cden = np.cumsum(np.pad(num, pad), axis=-1), np.cumsum(np.pad(den, pad), axis=-1)
    n = num.shape[-1]
    wnum = cnum[..., window:window + n] - cnum[..., :n]
    wden = cden[..., window:window + n] - cden[..., :n]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(wden > 0, wnum / np.where(wden > 0, wden, 1.0), np.nan)


def position_limit(positions: Sequence[float], loss: Sequence[float], tokens: Sequence[float],
                   reference_len: float | None, measure: PositionMeasureSpec,
                   delta: float | None = None) -> Limit:
    """The measured extrapolation length of one aggregate per-position loss curve (see
    PositionMeasureSpec)."""
    x = np.asarray(positions, dtype=float)
    loss = np.asarray(loss, dtype=float)
    tok = np.asarray(tokens, dtype=float)
    keep = np.isfinite(x) & (x > 0) & np.isfinite(loss) & np.isfinite(tok) & (tok > 0)
    x, loss, tok = x[keep], loss[keep], tok[keep]
    if not len(x):
        return Limit(math.nan, False, math.nan, math.nan, "no per-position data")
    order = np.argsort(x, kind="stable")
    x, loss, tok = x[order], loss[order], tok[order]
    smoothed = smooth_buckets(loss, tok, measure.window)
    ref_len = math.inf if reference_len is None or not np.isfinite(reference_len) else float(reference_len)
    note = ""
    in_ref = (x >= measure.reference_from * ref_len) & (x <= ref_len)
    if not in_ref.any():
        below = x <= ref_len
        if below.any():
            top = float(x[below].max())
            in_ref = below & (x >= measure.reference_from * top)
            note = (f"no position bucket in [{measure.reference_from:g} x {ref_len:g}, {ref_len:g}]; "
                    "reference from "
                    f"the buckets up to position {top:.0f}")
        else:
            in_ref = x == x[0]
            note = "every position bucket lies beyond the reference length; the first bucket is the reference"
    ref = float((loss[in_ref] * tok[in_ref]).sum() / tok[in_ref].sum())
    thr = ref + float(measure.param(delta=delta))
    scan = (x > ref_len) & (np.arange(len(x)) > np.where(in_ref)[0].max())
    if not scan.any():
        note = "; ".join(n for n in (note, "no position bucket beyond the reference length: "
                                           "nothing to measure") if n)
        return Limit(math.nan, False, ref, thr, note)
    above = np.where(scan & (smoothed > thr))[0]
    if not len(above):
        return Limit(float(x[-1]), True, ref, thr, note)
    j = int(above[0])
    i = j - 1
    return Limit(_log_crossing(x[i], x[j], smoothed[i], smoothed[j], thr), False, ref, thr, note)
