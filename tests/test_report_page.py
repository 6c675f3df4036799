"""The report page: ppl_sliding@L, provenance, layout of the HTML, base formatting, section order, empty
tables that say why, and warnings for models broken at their reference lengths."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
from report_records import curve_rows, knee_nll, passkey_rows, record, write_run

from harness.report.base import fmt_base
from harness.report.build import build_report

RUN_JSON = {"command": ["run", "--model", "m", "--sliding-stride", "512"], "suite": None,
            "versions": {"rope-harness": "0.1.0", "torch": "2.13.0+cpu", "transformers": "5.24.0",
                         "python": "3.11.7"},
            "torch_cuda": None, "cuda_available": False, "device": "x86_64",
            "git_commit": "4b515022698f85fe583f30db0acdcd77b23244d5", "started": "2026-11-25T12:04:19",
            "ended": "2026-11-25T12:07:39"}


def sliding_rows() -> list[dict]:
    """Two samples; ppl_sliding = exp(nll - 0.1 - 0.05 s) (more context per token than ppl@L)."""
    return [dict(r, ppl_sliding=math.exp(r["nll"] - 0.1 - 0.05 * r["sample"]), sliding_window=r["length"],
                 sliding_stride=512, sliding_tokens=r["length"] - 1) for r in curve_rows("s", 1e6, 9000, 2)]


def test_ppl_sliding_reaches_table_report_and_figure(tmp_path):
    out = build_report([write_run(tmp_path / "r", sliding_rows(), run_json=RUN_JSON)],
                       n_boot=50, min_samples=1)
    table = pd.read_csv(out / "table.csv")
    sliding = table[table["metric"] == "ppl_sliding@L"].set_index("length")
    assert list(sliding.index) == [1024, 2048, 4096, 8192, 16384]
    # over samples: exp(mean of per-sample log ppl_sliding), like ppl@L
    expected = math.exp(knee_nll(8192, 9000) + 0.02 * 0.5 - 0.1 - 0.05 * 0.5)
    assert sliding.at[8192, "mean"] == pytest.approx(expected) and sliding.at[8192, "n"] == 2
    assert sliding["ci_low"].notna().all()
    assert (out / "perplexity_ppl_sliding_vs_length.png").is_file()
    md = (out / "report.md").read_text()
    assert "ppl_sliding@L per length" in md and "Stride S = 512 tokens." in md
    assert "ppl_sliding" not in set(pd.read_csv(out / "summary.csv")["measure"])  # figure-only: not a row
    plain = build_report([write_run(tmp_path / "plain", curve_rows("s", 1e6, 9000, 2))],
                         n_boot=0, min_samples=1)
    assert not (plain / "perplexity_ppl_sliding_vs_length.png").exists()
    plain_md = (plain / "report.md").read_text()
    assert "ppl_sliding@L" not in plain_md  # absent: left out quietly
    assert "perplexity/ppl_sliding" not in plain_md


def mixed_run(tmp_path):
    rows = (curve_rows("b=1e4", 1e4, 5000, 2) + curve_rows("b=1e6", 1e6, 9000, 2)
            + curve_rows("b=40", 40, 6000, 2)
            + passkey_rows({"pk=1e5": (1e5, 0), "pk=1e6": (1e6, 0)}, accuracy=0.0))
    return write_run(tmp_path / "mixed", rows, run_json=RUN_JSON)


def test_page_layout_provenance_order_and_bases(tmp_path):
    out = build_report([mixed_run(tmp_path)], n_boot=0, min_samples=1)
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert md.index("## Task: perplexity") < md.index("## Task: passkey")  # the headline first
    for text in ("`rope-harness run --model m --sliding-stride 512`", "commit 4b515022698f",
                 "torch 2.13.0+cpu", "device x86_64, no CUDA", "2026-11-25T12:04:19 to 2026-11-25T12:07:39"):
        assert text in md, text
    assert "<code>rope-harness run --model m --sliding-stride 512</code>" in html
    assert "`" not in html  # code spans are <code>, never literal backticks
    assert html.count("<table>") == html.count("<div class='scroll'><table>") > 0  # wide tables scroll
    for header in re.findall(r"^\| setting \|.*$", md, flags=re.M):
        assert header.count("|") - 1 <= 14, header  # the per-length table of 5 lengths and the compact ones
    measured = [h for h in re.findall(r"^\| setting \|.*$", md, flags=re.M) if "measured [CI]" in h]
    assert measured and all(h.count("|") - 1 <= 9 for h in measured)
    law = [line for line in md.splitlines() if line.startswith("| b=1e6 |")][0]
    assert "| 1e6 | 1e4 |" in law  # rope_theta and pretrain_base as bases
    assert "1e+06" not in md and "| 10000 |" not in md and "| 1000000 |" not in md and "| 40 | 1e4 |" in md
    assert [fmt_base(v) for v in (40, 500, 1e4, 1e5, 1e6, 5e5, 1.5e6)] == ["40", "500", "1e4", "1e5", "1e6",
                                                                           "5e5", "1.5e6"]
    # the passkey accuracy table is empty (accuracy 0 at every length): the page says why
    assert ("No measured `passkey-accuracy` length for any setting: the best reference point already fails "
            "the threshold.") in md
    assert "no run.json" in (build_report([write_run(tmp_path / "bare", curve_rows("s", 1e6, 9000, 1))],
                                          n_boot=0) / "report.md").read_text()


def test_model_broken_at_its_reference_lengths_is_flagged(tmp_path):
    rows = curve_rows("ok", 1e4, 6000, 2) + curve_rows("broken", 1e6, 1e9, 2, shift=3.0)  # same model "tiny"
    out = build_report([write_run(tmp_path / "r", rows)], n_boot=0, min_samples=1)
    summary = pd.read_csv(out / "summary.csv").set_index("setting")
    broken = summary.loc["broken"]
    # flat, so it never fails relative to itself ("censored >= 16K"): withheld, not claimed
    assert pd.isna(broken["measured_limit"]) and pd.isna(broken["ratio_measured_to_predicted"])
    assert broken["warning"].startswith("broken at the reference lengths")
    assert "ok's" in broken["warning"] and broken["warning"].endswith("no length is measured")
    assert summary.at["ok", "measured_limit"] > 0
    assert pd.isna(summary.at["ok", "warning"])
    md = (out / "report.md").read_text()
    assert "> **Warning:** broken (`ppl@L`): broken at the reference lengths" in md
    assert "class='warn'" in (out / "report.html").read_text()


def test_peers_are_judged_on_the_same_samples_only(tmp_path):
    # a partly run setting holds only the hardest document, whose loss equals the full setting's there
    hard = curve_rows("full", 1e4, 6000, 1, shift=3.0)
    full = hard + curve_rows("full", 1e4, 6000, 3, sample=1)
    partial = [dict(r, setting="partial", rope_hash="hpartial") for r in hard]
    out = build_report([write_run(tmp_path / "r", full + partial)], n_boot=0, min_samples=1)
    summary = pd.read_csv(out / "summary.csv").set_index("setting")
    assert pd.isna(summary.at["partial", "warning"]) and summary.at["partial", "measured_limit"] > 0
    # the same document set is compared: the rule still fires where it should
    broken = [dict(r, setting="broken", rope_hash="hbroken", nll=r["nll"] + 3.0, ppl=r["ppl"] * math.exp(3.0))
              for r in full]
    out = build_report([write_run(tmp_path / "s", full + broken)], n_boot=0, min_samples=1)
    warning = pd.read_csv(out / "summary.csv").set_index("setting").at["broken", "warning"]
    assert warning.startswith("broken at the reference lengths") and "full's" in warning


def test_no_reference_length_or_degrading_inside_it_is_flagged(tmp_path):
    short_grid = [record("late", 1e6, L, s, knee_nll(L, 9000))
                  for s in range(2) for L in (8192, 16384, 32768)]
    degrading = curve_rows("tuned16k", 1e6, 2000, 2, tune_len=16384)  # fails 1.5x already at 8K <= T_tune
    out = build_report([write_run(tmp_path / "r", short_grid + degrading)], n_boot=0, min_samples=1)
    warning = pd.read_csv(out / "summary.csv").set_index("setting")["warning"]
    assert warning["late"].startswith("no grid length <= tune_len (4K): the shortest length (8K)")
    assert warning["tuned16k"].startswith("degrades inside its tuning length: ppl@L already fails the rule "
                                          "at L = 4K <= tune_len (16K)")


def test_a_curve_that_comes_back_past_its_crossing_is_flagged(tmp_path):
    """YaRN x4 on SmolLM2: passkey accuracy fails at 4-8K, then holds again at 12-16K; its first crossing
    must not read as the length where the model stays broken."""
    rows = passkey_rows({"plain": (1e6, 512), "recovers": (1e6, 512)}, samples=3)
    for r in rows:
        if r["setting"] == "recovers" and r["length"] == 2048:
            r.update(correct=1.0, answer_logprob=-0.5)
    out = build_report([write_run(tmp_path / "r", rows)], n_boot=0, min_samples=1)
    warned = pd.read_csv(out / "summary.csv").set_index(["setting", "measure"])["warning"].fillna("")
    for measure, name in (("passkey-accuracy", "passkey accuracy"), ("passkey-logprob", "answer log-prob")):
        assert warned["recovers", measure] == (
            f"comes back past its crossing: {name} fails the rule at L = 1K and passes it again at L = 2K; "
            "the measured length is the first crossing, not where it stays failed")
        assert "comes back" not in warned["plain", measure]


def test_headline_falls_back_to_the_default_definition_where_the_law_one_is_withheld():
    """A base that breaks the model inside the per-position reference window has no per-position length,
    but its ppl@L length is still measured: the headline says both."""
    from types import SimpleNamespace

    from harness.report.headline import _fallback

    def view(name, limits, metric="nll"):
        settings = pd.DataFrame([{"setting": s, "measured_limit": v, "measured_censored": False,
                                  "measured_ci_low": math.nan, "measured_ci_high": math.nan,
                                  "predicted_limit": 8192.0, "retrieval_bound": 725.0, "regime": "x",
                                  "warning": "", "note": ""} for s, v in limits.items()]).set_index(
            "setting", drop=False)
        return SimpleNamespace(spec=SimpleNamespace(name=name, metric=metric), settings=settings)

    def context(*views):
        return SimpleNamespace(default=views[0], analyses={str(k): v for k, v in enumerate(views)})

    position = view("per-position loss", {"broken": math.nan, "fine": 9000.0})
    default = view("ppl@L", {"broken": 2271.0, "fine": 12000.0})
    ctx = context(default, position)
    said = _fallback(ctx, position, position.settings.loc["broken"])
    assert said.startswith("; ppl@L limit at 2,271") and "0.28x Liu's limit (8,192)" in said
    assert _fallback(ctx, position, position.settings.loc["fine"]) == ""  # measured: nothing added
    assert _fallback(context(position), position, position.settings.loc["broken"]) == ""
    # a score at chance everywhere: the first definition on another metric that measured a length (the answer
    # log-prob), never a second threshold on the same score
    score = view("RULER score", {"broken": math.nan}, "score")
    effective = view("RULER effective length", {"broken": 1500.0}, "score")
    logprob = view("answer log-prob", {"broken": 3000.0}, "answer_logprob")
    said = _fallback(context(score, effective, logprob), score, score.settings.loc["broken"])
    assert said.startswith("; answer log-prob limit at 3,000")
