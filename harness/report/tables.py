"""Extra tables a task's figures draw beyond its measured-length definitions (breakdowns, position curves).

A figure module declares what it needs (`TABLES = {name: spec}`); the analysis step computes each one
once per task, so figure functions only draw and never aggregate records themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Breakdown:
    """Mean of a record column over a task's ok records per setting, `by` columns and length.

    Columns: setting, *by, length (float), mean, n. `numeric_by` coerces the `by` columns to numbers (rows
    without one dropped), e.g. needle depths. Empty when the records lack the column or a `by` column.
    """

    metric: str
    by: tuple[str, ...] = ()
    numeric_by: bool = False

    def compute(self, records: pd.DataFrame, positions: pd.DataFrame | None) -> pd.DataFrame:
        columns = ["setting", *self.by, "length", "mean", "n"]
        ok = records[records["status"] == "ok"] if "status" in records else records
        if self.metric not in ok or any(c not in ok for c in self.by):
            return pd.DataFrame(columns=columns)
        frame = pd.DataFrame({"setting": ok["setting"], "length": ok["length"].astype(float),
                              "value": pd.to_numeric(ok[self.metric].astype(float), errors="coerce")})
        for col in self.by:
            frame[col] = pd.to_numeric(ok[col], errors="coerce") if self.numeric_by else ok[col]
        frame = frame.dropna(subset=["value", *self.by])
        out = frame.groupby(["setting", *self.by, "length"], as_index=False, sort=True).agg(
            mean=("value", "mean"), n=("value", "size"))
        return out.reindex(columns=columns)


@dataclass(frozen=True)
class PositionCurves:
    """Per setting, the longest pass's per-position NLL, token-weighted over samples.

    Columns: setting, pos_start, pos_end, x (the bucket's mean position), nll, tokens. Empty without
    positions*.jsonl rows (figures tell that apart from invalid rows through the context's `positions`).
    """

    def compute(self, records: pd.DataFrame, positions: pd.DataFrame | None) -> pd.DataFrame:
        columns = ["setting", "pos_start", "pos_end", "x", "nll", "tokens"]
        if positions is None or not len(positions):
            return pd.DataFrame(columns=columns)
        pos = positions[positions["nll"].notna() & positions["tokens"].fillna(0).gt(0)]
        if not len(pos):
            return pd.DataFrame(columns=columns)
        longest = pos.groupby("setting")["length"].transform("max")
        pos = pos[pos["length"] == longest]
        weighted = pos.assign(w_nll=pos["nll"] * pos["tokens"])
        agg = weighted.groupby(["setting", "pos_start", "pos_end"], as_index=False)[["w_nll", "tokens"]].sum()
        agg["nll"] = agg["w_nll"] / agg["tokens"]
        agg["x"] = (agg["pos_start"] + agg["pos_end"] - 1) / 2.0
        return agg[columns]


@dataclass(frozen=True)
class DepthCheck:
    """Per setting, asked depth and length: the needle depth the prompt achieved (record `needle_depth`) and
    whether it strays from the asked one by more than `tolerance` (at short L the haystack is too short to
    place the needle finely, so depths collapse).

    Columns: setting, depth, length, achieved (mean), deviation (largest |achieved - asked| of the cells),
    flagged, n. Empty when the records carry no needle_depth.
    """

    tolerance: float = 0.05

    def compute(self, records: pd.DataFrame, positions: pd.DataFrame | None) -> pd.DataFrame:
        columns = ["setting", "depth", "length", "achieved", "deviation", "flagged", "n"]
        ok = records[records["status"] == "ok"] if "status" in records else records
        if "needle_depth" not in ok or "depth" not in ok:
            return pd.DataFrame(columns=columns)
        frame = pd.DataFrame({"setting": ok["setting"], "length": ok["length"].astype(float),
                              "depth": pd.to_numeric(ok["depth"], errors="coerce"),
                              "achieved": pd.to_numeric(ok["needle_depth"], errors="coerce")}).dropna()
        frame["deviation"] = (frame["achieved"] - frame["depth"]).abs()
        out = frame.groupby(["setting", "depth", "length"], as_index=False, sort=True).agg(
            achieved=("achieved", "mean"), deviation=("deviation", "max"), n=("achieved", "size"))
        out["flagged"] = out["deviation"] > self.tolerance
        return out.reindex(columns=columns)

    def note(self, frame: pd.DataFrame) -> str:
        """A line counting the flagged cells (analysis.analyze adds it to the task's notes), "" when none."""
        if not len(frame) or not frame["flagged"].any():
            return ""
        flagged = frame[frame["flagged"]]
        examples = flagged.drop_duplicates(["depth", "length"]).sort_values(["length", "depth"]).head(4)
        shown = ", ".join(f"L = {row.length:,.0f}: asked {row.depth:g} -> {row.achieved:.2f}"
                          for row in examples.itertuples())
        return (f"needle depth: {len(flagged)} of {len(frame)} (setting, depth, length) cells placed the "
                f"needle more than {self.tolerance:g} from the asked depth ({shown}); the haystack is too "
                "short there to place it finely. Hatched in the heatmaps, which stay keyed by the asked "
                "depth and print the achieved one")


@dataclass(frozen=True)
class LawVsBase:
    """Both limits as functions of the base, per law group (lawblock.law_group: the settings sharing
    rotary_dim, pretrain_base, train_len and tune_len) with two or more settings in these records.

    Columns: group, base, liu_limit (NaN where Liu gives no upper bound, base < beta3), retrieval_bound (NaN
    beyond the search cap), beta0, beta3, train_len, tune_len. Bases: a log grid of `per_decade` points per
    decade from half the smallest of (beta3, the settings' bases) to twice the largest of (beta0, the
    settings' bases), plus beta3, beta0 and a base just above beta0 (Liu's jump there).
    """

    per_decade: int = 16

    def compute(self, records: pd.DataFrame, positions: pd.DataFrame | None) -> pd.DataFrame:
        from harness.core.errors import InputError
        from harness.law import liu as law
        from harness.report.lawblock import law_group, retrieval_bound_of

        columns = ["group", "base", "liu_limit", "retrieval_bound", "beta0", "beta3", "train_len", "tune_len"]
        needed = ["setting", "rope_type", "rope_theta", "rotary_dim", "pretrain_base", "train_len",
                  "tune_len"]
        if any(c not in records for c in needed) or not len(records):
            return pd.DataFrame(columns=columns)
        first = records[needed].groupby("setting", sort=False).first()
        first["group"] = [law_group(row) for _, row in first.iterrows()]
        first["base"] = pd.to_numeric(first["rope_theta"], errors="coerce")
        first = first.dropna(subset=["group", "base"])
        rows = []
        for group, members in first.groupby("group", sort=True):
            if len(members) < 2:
                continue
            row = members.iloc[0]
            d, train = int(row["rotary_dim"]), float(row["train_len"])
            tune = float(row["tune_len"]) if pd.notna(row["tune_len"]) else train
            b0 = float(row["pretrain_base"]) if pd.notna(row["pretrain_base"]) else 10000.0
            try:
                beta0 = law.critical_base(train, tune, b0)
            except InputError:
                continue
            beta3 = tune / (2 * math.pi)
            lo = max(1.5, min(beta3, members["base"].min()) / 2)
            hi = max(beta0, members["base"].max()) * 2
            count = max(8, math.ceil(math.log10(hi / lo) * self.per_decade))
            special = [beta3, beta0, beta0 * (1 + 1e-9)]  # Liu's thresholds, and its jump at beta0
            grid = np.unique(np.concatenate([np.geomspace(lo, hi, count), special]))
            for base in grid[grid > 1]:
                limit = law.predict(d, train, float(base), tune, b0).extrapolation_limit
                bound = retrieval_bound_of(float(base), d)
                rows.append({"group": group, "base": float(base),
                             "liu_limit": math.nan if limit is None else float(limit),
                             "retrieval_bound": math.nan if bound is None else float(bound), "beta0": beta0,
                             "beta3": beta3, "train_len": train, "tune_len": tune})
        return pd.DataFrame(rows, columns=columns)


TableSpec = Breakdown | PositionCurves | DepthCheck | LawVsBase
