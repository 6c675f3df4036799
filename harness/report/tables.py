"""Extra tables a task's figures draw beyond its measured-length definitions (breakdowns, position curves).

A figure module declares what it needs (`TABLES = {name: spec}`); the analysis step computes each one
once per task, so figure functions only draw and never aggregate records themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

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


TableSpec = Breakdown | PositionCurves
