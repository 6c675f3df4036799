"""`rope-harness law`: the scaling law's table for one model shape and a few bases, no model weights.

harness.cli builds its parser; this module turns the parsed flags into the table. `--json` prints
exactly one JSON object on stdout (numbers or null), so scripts can read it; anything else (library
logs) goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Any

from harness.core.errors import InputError
from harness.law import liu as law
from harness.law import men as retrieval_law
from harness.model.checkpoints import KNOWN


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Law inputs from the flags, and from the model config when --model is given (flags win)."""
    flags = {"rotary_dim": args.head_dim, "train_len": args.train_len, "tune_len": args.tune_len,
             "pretrain_base": args.pretrain_base}
    inputs: dict[str, Any] = dict(flags)
    own: dict[str, Any] = {}
    if args.model:
        from harness.model.models import law_inputs_for  # imports transformers (~2 s): only when asked

        # Library chatter must not corrupt --json stdout.
        with contextlib.redirect_stdout(sys.stderr):
            own = law_inputs_for(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code,
                                 pretrain_base=args.pretrain_base, train_len=args.train_len,
                                 tune_len=args.tune_len)
        inputs.update({k: v for k, v in own.items() if v is not None and k != "hybrid"})
        inputs.update({k: v for k, v in flags.items() if v is not None})
        inputs["hybrid"] = own.get("hybrid")
    missing = [flag for flag, key in (("--head-dim", "rotary_dim"), ("--train-len", "train_len"))
               if inputs.get(key) is None]
    if missing:
        them = "them" if len(missing) > 1 else "it"
        raise InputError(f"missing {' and '.join(missing)}: "
                         f"pass {them}, or --model PATH_OR_ID to read {them} "
                         "from a model config")
    if inputs["pretrain_base"] is None:
        inputs["pretrain_base"] = 10000.0
    if inputs["tune_len"] is None:
        inputs["tune_len"] = inputs["train_len"]
    if args.base:
        # Explicit bases are fine-tuned base changes of default RoPE: the case the law covers.
        inputs["bases"], inputs["rope_type"] = list(args.base), "default"
    elif args.model:
        # The model as it is: its current rope_theta and rope type when the loader reports them
        # (not-covered for yarn, llama3, ...), else its pre-training base.
        inputs["bases"] = [own.get("rope_theta") or inputs["pretrain_base"]]
        inputs["rope_type"] = own.get("rope_type") or "default"
    else:
        raise InputError("no base given: pass --base B (repeatable, e.g. --base 1e6), or --model to use its "
                         "own rope_theta")
    return inputs


def known_rows(out: dict[str, Any]) -> list:
    """The known-checkpoint rows any law input was taken from (their source, to cite)."""
    names = {str(out.get(f"{k}_source", "")).removeprefix("known:") for k in ("pretrain_base", "train_len",
                                                                              "tune_len")}
    return [row for row in KNOWN if row.name in names]


def _number(value: float | None) -> int | float | None:
    """JSON-safe number: integral floats as int, non-finite as null."""
    if value is None or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else float(value)


def binds_first(limit: float | None, bound: int | None, regime: str) -> str | None:
    """Which limit a context reaches first: 'extrapolation' (Liu's), 'retrieval' (Men's) or 'both'; None
    where the law gives no prediction or neither limit is finite."""
    if regime == "not-covered" or (limit is None and bound is None):
        return None
    if limit is None or (bound is not None and bound < limit):
        return "retrieval"
    return "extrapolation" if bound is None or limit < bound else "both"


def _setting(p: law.Prediction, d: int, train: float, tune: float, b0: float) -> dict[str, Any]:
    """One base's row: regime, Liu's limit, Men's bound, which binds first; at the boundary beta = beta0
    also the larger-base branch's limit just above it (`limit_just_above`, else null)."""
    bound = None if p.regime == "not-covered" else retrieval_law.retrieval_bound(p.base, d)
    limit = None if p.extrapolation_limit is None else round(p.extrapolation_limit)
    above = None
    beta0 = law.critical_base(train, tune, b0)
    if p.regime == "tuning-bounded" and math.isclose(p.base, beta0, rel_tol=1e-12):
        above = round(law.boundary_limits(d, train, tune, b0)[1])
    return {"base": _number(p.base), "regime": p.regime, "critical_dim": p.critical_dim,
            "extrapolation_limit": limit, "limit_just_above": above, "retrieval_bound": bound,
            "binds_first": binds_first(limit, bound, p.regime)}


def _layers(hybrid: dict[str, Any] | None, train: float) -> dict[str, Any] | None:
    """Per-layer-type RoPE (Gemma 3): the law applies to the law section's layers (the global ones); a
    local section whose attention window lies below T_train sets no limit (every distance it sees was
    trained); one with no such window is named, not predicted."""
    if not hybrid:
        return None
    local = []
    for entry in hybrid["local"]:
        window = entry["window"]
        why = (f"attention spans at most {window:,} tokens, below T_train {train:,.0f}: every distance these "
               "layers see was seen in training, so they set no limit"
               if window and window < train else
               "no attention window below T_train: the law is not applied to these layers")
        local.append({**entry, "limit": None, "why": why})
    return {"layers": hybrid["layers"], "law": hybrid["law"], "local": local}


def report(args: argparse.Namespace) -> dict[str, Any]:
    """The law's answer for the parsed arguments, as the --json object."""
    inputs = _inputs(args)
    d, train, tune, b0 = (inputs["rotary_dim"], inputs["train_len"], inputs["tune_len"],
                          inputs["pretrain_base"])
    predictions = [law.predict(d, train, base, tune, b0, rope_type=inputs["rope_type"])
                   for base in inputs["bases"]]
    out: dict[str, Any] = {
        "head_dim": d,
        "train_len": _number(train),
        "tune_len": _number(tune),
        "pretrain_base": _number(b0),
        "critical_dim": law.critical_dim(d, train, b0),
        "critical_base": _number(law.critical_base(train, tune, b0)),
        "thresholds": {k: _number(v) for k, v in law.small_base_thresholds(tune).items()},
        # The limit is a token count: reported rounded to an integer (LLaMA2, base 1e6: 129027).
        # retrieval_bound (Men et al.) is null where B(m) >= 0 at every m below
        # retrieval_law.RETRIEVAL_CAP, and for RoPE variants whose frequencies are not base^(-2n/d)
        # (not-covered).
        "settings": [_setting(p, d, train, tune, b0) for p in predictions],
    }
    layers = _layers(inputs.get("hybrid"), train)
    if layers is not None:
        out["layers"] = layers
    if args.target_len is not None:
        out["target_len"] = _number(args.target_len)
        out["base_for_target"] = _number(law.base_for_target(args.target_len, d, train, tune, b0))
        out["min_base_for_retrieval"] = _number(retrieval_law.min_base_for_retrieval(args.target_len, d))
    if args.model:
        out["model"] = args.model
        out.update({k: v for k, v in inputs.items() if k.endswith("_source")})
    return out


def _source(out: dict[str, Any], key: str) -> str:
    """'  (source)' for a law input read with --model; an input only assumed from the config says so."""
    source = out.get(f"{key}_source")
    if source is None:
        return ""
    assumed = source not in ("flag", "rope_harness_law") and not source.startswith("known:")
    return f"  ({source}{': assumed from the config, check it' if assumed else ''})"


def _table(out: dict[str, Any]) -> str:
    def g(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f}" if abs(x) >= 100 else f"{x:.4g}"

    t = out["thresholds"]
    header = [
        ("model", out.get("model")),
        ("rotary dim d", str(out["head_dim"])),
        ("train length", g(out["train_len"]) + _source(out, "train_len")),
        ("tune length", g(out["tune_len"]) + _source(out, "tune_len")),
        ("pre-training base b0", g(out["pretrain_base"]) + _source(out, "pretrain_base")),
        ("critical dim d_extra", str(out["critical_dim"])),
        ("critical base beta0", g(out["critical_base"])),
        ("small-base thresholds", f"beta1 {g(t['beta1'])}  beta2 {g(t['beta2'])}  beta3 {g(t['beta3'])}"),
    ]
    lines = ["RoPE base limits: extrapolation scaling law (Liu et al., ICLR 2024), "
             "retrieval bound (Men et al., "
             "NeurIPS 2024)"]
    lines += [f"  {name:<22} {value}" for name, value in header if value is not None]
    lines += [f"  {'history':<22} {row.source}" for row in known_rows(out)]
    lines += _layer_lines(out.get("layers"), g)
    rows = [("base", "regime", "critical dim", "extrapolation limit", "retrieval bound")]
    for s in out["settings"]:
        limit, bound = s["extrapolation_limit"], s["retrieval_bound"]
        shown = {"unbounded": "no upper bound", "not-covered": "no prediction"}.get(s["regime"], g(limit))
        retrieval = ("no prediction" if s["regime"] == "not-covered"
                     else f">= {g(retrieval_law.RETRIEVAL_CAP)}" if bound is None else g(bound))
        rows.append((g(s["base"]), s["regime"], "-" if s["critical_dim"] is None else str(s["critical_dim"]),
                     shown if limit is None else g(limit), retrieval))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines.append("")
    for r in rows:
        lines.append(f"  {r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  "
                     f"{r[4]:>{widths[4]}}")
    lines += _boundary_lines(out, g)
    if "base_for_target" in out:
        target, liu, retrieval = g(out["target_len"]), out["base_for_target"], out["min_base_for_retrieval"]
        lines.append("")
        lines.append(f"  base for target length {target}: {g(liu)}"
                     + ("  (= beta0: any base just above it reaches the target)"
                        if liu == out["critical_base"] else ""))
        lo, hi = retrieval_law.BASE_SEARCH_RANGE
        lines.append(f"  min base for retrieval at {target}: "
                     + (f"{g(retrieval)}  (B(m) >= 0 for every distance m < {target})"
                        if retrieval is not None
                        else f"none in [{lo:g}, {hi:g}]"))
        if retrieval is None:
            lines.append(f"  binding: retrieval (no base in [{lo:g}, {hi:g}] "
                         "keeps B(m) >= 0 up to the target)")
        else:
            binding = "retrieval" if retrieval > liu else "extrapolation" if retrieval < liu else "both"
            lines.append(f"  binding: {binding} (the larger base: {g(max(liu, retrieval))}; "
                         f"Liu {g(liu)}, retrieval {g(retrieval)})")
            lines.append("    B(m) >= 0 is not monotone in the base: "
                         "check the retrieval bound of the base you pick")
    lines += [
        "",
        "  beta1 = 2*T_tune/pi, beta2 = T_tune/pi, beta3 = T_tune/(2*pi): "
        "below them even the slowest RoPE pair",
        "    (angle rate ~1/base) turns through a quarter, a half, a full period within T_tune; below beta3",
        "    every pair completes a period, so the law sets no upper bound (regime unbounded)",
        "  retrieval bound: the longest context whose every distance m keeps "
        "B(m) = sum_n cos(m*b^(-2n/d)) >= 0,",
        "    i.e. similar keys still outscore random ones (Men et al.); "
        "a context needs both limits: the smaller",
        "    one applies",
    ]
    return "\n".join(lines)


def _layer_lines(layers: dict[str, Any] | None, g) -> list[str]:
    """Which layers the law reads (Gemma 3: the global ones) and why the local ones set no limit."""
    if not layers:
        return []
    own = layers["law"]
    lines = [f"  {'law applies to':<22} the {own['layers']} of {layers['layers']} {own['section']} layers "
             f"(base {g(own['rope_theta'])}); the limits below are theirs"]
    for entry in layers["local"]:
        window = f", window {entry['window']:,}" if entry["window"] else ""
        lines.append(f"  {'no limit from':<22} the {entry['layers']} {entry['section']} layers "
                     f"(base {g(entry['rope_theta'])}{window}): {entry['why']}")
    return lines


def _boundary_lines(out: dict[str, Any], g) -> list[str]:
    """At beta = beta0 the law's limit jumps: both branches' numbers, and which limit binds first."""
    lines = []
    for s in out["settings"]:
        if s["limit_just_above"] is None:
            continue
        d, d_extra = out["head_dim"], out["critical_dim"]
        lines += [
            "",
            f"  base {g(s['base'])} is the boundary beta = beta0, where Liu's limit jumps:",
            f"    at beta0 (tuning-bounded, a lower bound): T_tune = {g(s['extrapolation_limit'])}",
            f"    just above (larger-base branch): 2*pi*beta0^(d_extra/d) = "
            f"2*pi*{s['base']:.4g}^({d_extra}/{d}) = {g(s['limit_just_above'])}",
            f"    so the law puts the loss cliff between {g(s['extrapolation_limit'])} and "
            f"{g(s['limit_just_above'])}",
        ]
        if s["retrieval_bound"] is not None:
            first = {"extrapolation": "Liu's limit binds first: perplexity should break before retrieval",
                     "retrieval": "the retrieval bound binds first: retrieval should fail before perplexity",
                     "both": "both limits fall together"}[s["binds_first"]]
            lines.append(f"    Men's retrieval bound (d = {d}): {g(s['retrieval_bound'])}; {first}")
    return lines


def command(args: argparse.Namespace) -> int:
    """Run `rope-harness law`; bad input raises InputError (the caller prints it and exits 2)."""
    out = report(args)
    if args.json:
        print(json.dumps(out, allow_nan=False))
    else:
        print(_table(out))
    return 0

