"""Curves the measured lengths read (per-sample matrices from records and position buckets) and bootstrap CIs.

The pandas side of harness/core/metrics.py (which stays numpy-only so tasks can declare measures cheaply):
frames in, per-sample matrices out, no plotting; CIs resample whole samples.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.core.metrics import TRANSFORMS, MeasureSpec


@dataclass
class Curve:
    """Per-sample values of one setting: matrix [samples x lengths], NaN where a cell is missing/failed."""

    lengths: np.ndarray
    samples: list[Any]
    values: np.ndarray

    def aggregate(self, measure: MeasureSpec, weights: np.ndarray | None = None) -> np.ndarray:
        """transform(weighted mean over samples) per length; weights [B x S] -> [B x L], else [L]."""
        present = np.isfinite(self.values)
        filled = np.where(present, self.values, 0.0)
        w = np.ones((1, len(self.samples))) if weights is None else np.atleast_2d(weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (w @ filled) / (w @ present.astype(float))
        out = TRANSFORMS[measure.transform](mean)
        return out[0] if weights is None else out

    def counts(self) -> np.ndarray:
        return np.isfinite(self.values).sum(axis=0)


def _sample_units(frame: pd.DataFrame, seed: Any = None) -> pd.Series:
    """A sample's identity "seed/sample" (the same string for its records and its position buckets)."""
    if "seed" in frame:
        return frame["seed"].astype(str) + "/" + frame["sample"].astype(str)
    if seed is not None:
        return str(seed) + "/" + frame["sample"].astype(str)
    return frame["sample"].astype(str)


def build_curve(records: pd.DataFrame, measure: MeasureSpec) -> Curve:
    """One setting's ok records -> Curve; a sample is (seed, sample), its cells averaged over depths."""
    ok = records[(records["status"] == "ok") & records[measure.metric].notna()] if measure.metric in records \
        else records.iloc[0:0]
    if not len(ok):
        lengths = np.sort(records["length"].dropna().unique().astype(float))
        return Curve(lengths, [], np.empty((0, len(lengths))))
    frame = pd.DataFrame({"unit": _sample_units(ok).to_numpy(),
                          "length": ok["length"].astype(float).to_numpy(),
                          "value": ok[measure.metric].astype(float).to_numpy()})
    wide = frame.groupby(["unit", "length"])["value"].mean().unstack("length")
    all_lengths = np.sort(records["length"].dropna().unique().astype(float))
    wide = wide.reindex(columns=all_lengths)
    return Curve(all_lengths, list(wide.index), wide.to_numpy(dtype=float))


@dataclass
class PositionCurve:
    """Position buckets of one setting's longest pass: bucket bounds and mean position x [K]; per sample
    mean nll and tokens [samples x K] (NaN and 0 where a sample lacks the bucket)."""

    starts: np.ndarray
    ends: np.ndarray
    x: np.ndarray
    samples: list[Any]
    nll: np.ndarray
    tokens: np.ndarray
    length: float = math.nan

    def aggregate(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(loss, tokens) per bucket: token-weighted mean over (weighted) samples; [K], or [B x K] with
        weights."""
        present = np.isfinite(self.nll) & (self.tokens > 0)
        tok = np.where(present, self.tokens, 0.0)
        num = np.where(present, self.nll * tok, 0.0)
        w = np.ones((1, len(self.samples))) if weights is None else np.atleast_2d(weights)
        total = w @ tok
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = np.where(total > 0, (w @ num) / np.where(total > 0, total, 1.0), np.nan)
        return (loss[0], total[0]) if weights is None else (loss, total)

    def counts(self) -> np.ndarray:
        return (np.isfinite(self.nll) & (self.tokens > 0)).sum(axis=0)


POSITION_COLUMNS = ("sample", "pos_start", "pos_end", "nll", "tokens")


def build_position_curve(positions: pd.DataFrame | None, seed: Any = None) -> PositionCurve:
    """One setting's positions rows -> PositionCurve of its longest pass (the buckets of that length)."""
    empty = PositionCurve(*(np.empty(0) for _ in range(3)), [], np.empty((0, 0)), np.empty((0, 0)))
    if positions is None or not len(positions) or not set(POSITION_COLUMNS) <= set(positions):
        return empty
    pos = positions[positions["nll"].notna() & pd.to_numeric(positions["tokens"], errors="coerce").gt(0)]
    length = math.nan
    if "length" in pos and pos["length"].notna().any():
        length = float(pos["length"].max())
        pos = pos[pos["length"] == length]
    if not len(pos):
        return empty
    frame = pd.DataFrame({"unit": _sample_units(pos, seed).to_numpy(),
                          "start": pos["pos_start"].astype(float).to_numpy(),
                          "end": pos["pos_end"].astype(float).to_numpy(),
                          "w": (pos["nll"].astype(float) * pos["tokens"].astype(float)).to_numpy(),
                          "tokens": pos["tokens"].astype(float).to_numpy()})
    sums = frame.groupby(["unit", "start", "end"])[["w", "tokens"]].sum()
    sums["nll"] = sums["w"] / sums["tokens"]
    nll = sums["nll"].unstack(["start", "end"]).sort_index(axis=1)
    tokens = sums["tokens"].unstack(["start", "end"]).reindex(columns=nll.columns).fillna(0.0)
    starts = np.array([c[0] for c in nll.columns], dtype=float)
    ends = np.array([c[1] for c in nll.columns], dtype=float)
    return PositionCurve(starts, ends, (starts + ends - 1) / 2.0, list(nll.index), nll.to_numpy(dtype=float),
                         tokens.to_numpy(dtype=float), length)


def bootstrap_weights(n_samples: int, n_boot: int, seed: int) -> np.ndarray | None:
    """[n_boot x n_samples] resampling counts (multinomial), or None when a CI is undefined (< 2 samples)."""
    if n_samples < 2 or n_boot < 1:
        return None
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_samples, np.full(n_samples, 1.0 / n_samples), size=n_boot).astype(float)


def setting_seed(seed: int, *keys: Any) -> int:
    """A stable per-setting seed, so a setting's CI does not depend on which other settings are reported."""
    return (seed * 1_000_003 + zlib.crc32("\x1f".join(map(str, keys)).encode())) % (2**32)


def percentile_interval(draws: np.ndarray, ci: float) -> tuple[float, float]:
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return math.nan, math.nan
    lo, hi = np.percentile(draws, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)
