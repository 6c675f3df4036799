"""The settings across a report: model families, the legend order and the colours every figure shares.

A model family is the set of settings a report compares on one axis: the zoo's checkpoints share one (one
tokenizer, one pre-training), any other model is its own. The verdict at the top of the report takes one
line per family, real models first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

ZOO_FAMILY = "zoo"

__all__ = ["ZOO_FAMILY", "family_of", "model_families", "real_first", "setting_colors", "setting_order"]


def family_of(model: str) -> str:
    """The zoo's checkpoints are one family (one tokenizer, one pre-training); any other model is its own."""
    return ZOO_FAMILY if model.startswith("zoo:") else model


def real_first(families: Iterable[str]) -> list[str]:
    """Families in first-seen order, the zoo's last: a real model's answer is what a reader came for."""
    names = list(dict.fromkeys(families))
    return sorted(names, key=lambda name: name == ZOO_FAMILY)


def model_families(records: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Records split by model family: the zoo's checkpoints share one, any other model is its own. Settings of
    different models (other tokenizers, other training) never share an axis; one family -> {"": records}."""
    models = records["model"].astype(str) if "model" in records else pd.Series("", index=records.index)
    family = models.map(family_of)
    names = list(dict.fromkeys(family))
    if len(names) <= 1:
        return {"": records}
    return {name: records[family == name] for name in names}


def setting_order(records: pd.DataFrame) -> list[str]:
    """Settings ordered by model family, rope type, theta (as a number: 40 before 1e7), label: legends and
    colours follow this order."""
    first = records.groupby("setting", sort=False).first()
    keys = []
    for setting, row in first.iterrows():
        theta = pd.to_numeric(row.get("rope_theta"), errors="coerce")
        keys.append((family_of(str(row.get("model") or "")), str(row.get("rope_type") or ""),
                     float(theta) if pd.notna(theta) else 0.0, str(setting), setting))
    return [k[-1] for k in sorted(keys, key=lambda k: k[:-1])]


def setting_colors(settings: Sequence[str]) -> dict[str, Any]:
    """tab10 in setting order (a sampled viridis beyond ten settings)."""
    from matplotlib import colormaps

    settings = list(settings)
    if len(settings) <= 10:
        cmap = colormaps["tab10"]
        return {s: cmap(i) for i, s in enumerate(settings)}
    cmap = colormaps["viridis"]
    return {s: cmap(i / max(1, len(settings) - 1)) for i, s in enumerate(settings)}
