"""Warnings for settings whose measured length would mislead: a model already broken at its reference lengths.

A measured length reads "how far past tune_len the metric stays near its best at L <= tune_len". That says
nothing when the reference itself is broken, and a broken model that never gets worse would otherwise
show up as "censored >= the grid's end". Flagged (summary.csv `warning`, and on the report page):
- no grid length <= the reference length (tune_len): the shortest length stands in for the reference;
- the best value at L <= tune_len already fails the rule (nothing to measure);
- the curve already fails the rule at a length <= tune_len past its best (degrading inside its tuning
  length);
- the curve passes the rule again at a length past its first failure (the first crossing is not where the
  model stays broken);
- the best reference value fails the rule against another setting of the same model, samples and
  definition (e.g. a base changed at evaluation time that breaks the model at every length).
And, before any of these, `withheld`: no measured length at all for a setting whose reference is at chance
(MeasureSpec.chance: it never did the task) or with too few samples per length to be evidence.
Pure numpy on one definition's curves; analysis.py calls it and fills the column.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from harness.core.metrics import MeasureSpec
from harness.report.base import fmt_length


def _fails(measure: MeasureSpec, value: float, reference: float, param: float | None) -> bool:
    """Whether `value` fails the definition's rule against `reference` (as measured_limit applies it)."""
    if measure.rule == "factor":
        return value < reference / param if measure.higher_is_better else value > reference * param
    if measure.rule == "delta":
        return value < reference - param if measure.higher_is_better else value > reference + param
    return value < param if measure.higher_is_better else value > param


def curve_warnings(measure: MeasureSpec, lengths: Sequence[float], values: Sequence[float],
                   reference_len: float | None, factor: float | None = None, delta: float | None = None,
                   threshold: float | None = None) -> list[str]:
    """Warnings about one setting's per-length aggregate curve (a records definition)."""
    lens = np.asarray(lengths, dtype=float)
    vals = np.asarray(values, dtype=float)
    keep = np.isfinite(lens) & np.isfinite(vals)
    lens, vals = lens[keep], vals[keep]
    if not len(lens) or reference_len is None or not math.isfinite(float(reference_len)):
        return []
    order = np.argsort(lens, kind="stable")
    lens, vals = lens[order], vals[order]
    ref_len = float(reference_len)
    param = measure.param(factor, delta, threshold)
    in_ref = np.where(lens <= ref_len)[0]
    if not len(in_ref):
        return [f"no grid length <= {measure.reference} ({fmt_length(ref_len)}): the shortest length "
                f"({fmt_length(lens[0])}) stands in for the reference, so the measured length is not "
                "relative to the tuned range"]
    pick = np.argmax if measure.higher_is_better else np.argmin
    best = int(in_ref[pick(vals[in_ref])])
    if measure.rule == "threshold" and _fails(measure, vals[best], vals[best], param):
        return [f"broken at the reference lengths: its best {measure.name} at L <= {measure.reference} "
                f"({vals[best]:.3g}) already fails the rule ({measure.label(factor, delta, threshold)})"]
    fails = [_fails(measure, v, vals[best], param) for v in vals]
    failed = next((k for k in range(best + 1, len(lens)) if fails[k]), None)
    if failed is None:
        return []
    warnings = []
    first = fmt_length(lens[failed])
    if lens[failed] <= ref_len:
        warnings.append(f"degrades inside its tuning length: {measure.name} already fails the rule at "
                        f"L = {first} <= {measure.reference} ({fmt_length(ref_len)})")
    again = next((k for k in range(failed + 1, len(lens)) if not fails[k]), None)
    if again is not None:
        warnings.append(f"comes back past its crossing: {measure.name} fails the rule at L = {first} and "
                        f"passes it again at L = {fmt_length(lens[again])}; the measured length is the first "
                        "crossing, not where it stays failed")
    return warnings


def position_warnings(note: str) -> list[str]:
    """Warnings of a per-position definition, read off position_limit's note."""
    if "every position bucket lies beyond" in note:
        return [f"no position bucket <= the reference length: {note}"]
    return []


def peer_warnings(measure: MeasureSpec, settings: Sequence[str], peers_of: Sequence[Hashable | None],
                  references: Sequence[float], factor: float | None = None, delta: float | None = None
                  ) -> dict[str, str]:
    """Settings whose best reference value fails the rule against the best one of another setting with the
    same peers_of key (same model, same samples; None: judged by none) and definition: {setting: warning}."""
    if measure.rule == "threshold":
        return {}
    param = measure.param(factor, delta)
    out: dict[str, str] = {}
    groups: dict[Hashable, list[tuple[str, float]]] = {}
    for setting, key, ref in zip(settings, peers_of, references, strict=True):
        if key is not None and ref is not None and math.isfinite(float(ref)):
            groups.setdefault(key, []).append((setting, float(ref)))
    for peers in groups.values():
        if len(peers) < 2:
            continue
        pick = max if measure.higher_is_better else min
        best_setting, best = pick(peers, key=lambda p: p[1])
        for setting, ref in peers:
            if setting != best_setting and _fails(measure, ref, best, param):
                out[setting] = (f"broken at the reference lengths: its best {measure.name} at L <= "
                                f"{measure.reference} ({ref:.4g}) fails the rule against {best_setting}'s "
                                f"({best:.4g}, same model and samples)")
    return out


def withheld(measure: MeasureSpec, reference: float, chance: float | None, n_samples: int,
             min_samples: int) -> str:
    """Why a measured length must not be shown as evidence ('' when it may): the reference is at chance (the
    model never did the task), or too few samples per length."""
    if chance is not None and np.isfinite(reference):
        at_chance = reference <= chance if measure.higher_is_better else reference >= chance
        if at_chance:
            return (f"broken at the reference lengths: its best {measure.name} at L <= {measure.reference} "
                    f"({reference:.4g}) is at chance ({chance:.4g}): no length is measured")
    if 0 < n_samples < min_samples:
        return (f"insufficient samples: {n_samples} per length, fewer than {min_samples} "
                "(report --min-samples): no length is measured")
    return ""
