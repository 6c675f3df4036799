"""The report's law block (both limits, the measured critical dimension) and the extrapolation-vs-base
figure."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from report_records import curve_rows, write_run  # noqa: E402

from harness.law import liu as law  # noqa: E402
from harness.law.men import retrieval_bound  # noqa: E402
from harness.report import analysis, registry  # noqa: E402
from harness.report.build import build_report  # noqa: E402
from harness.report.figures.perplexity import limit_vs_base  # noqa: E402
from harness.report.lawblock import law_group, measured_critical_dim, predict_for  # noqa: E402
from harness.report.load import load_runs  # noqa: E402
from harness.report.tables import LawVsBase  # noqa: E402
from tasks.perplexity import MEASURES  # noqa: E402

LOG15 = math.log(1.5)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def zoo_like_rows() -> list[dict]:
    """d = 128, T_train = T_tune = 4096, b0 = 1e4: larger-base 1e6 (knee 9000) and 5e5 (never fails:
    censored), tuning-bounded 1e4, unbounded 300, a yarn setting (not covered), and a base tuned at 8K
    alone."""
    spread = [r for k, knee in enumerate((6000, 8000, 9000, 11000))
              for r in curve_rows("b1e6", 1e6, knee, samples=1, sample=k)]  # a CI with a width
    return (spread + curve_rows("b5e5", 5e5, 1e9, samples=4)
            + curve_rows("b1e4", 1e4, 5000, samples=4) + curve_rows("b300", 300, 6000, samples=4)
            + curve_rows("yarn", 1e4, 9000, samples=2, rope_type="yarn")
            + curve_rows("t8k", 1e6, 9000, samples=2, tune_len=8192))


def test_predict_for_carries_both_limits():
    block = predict_for({"rotary_dim": 128, "train_len": 4096, "tune_len": 4096, "pretrain_base": 1e4,
                         "rope_theta": 1e6, "rope_type": "default"})
    expected = law.predict(128, 4096, 1e6, 4096, 1e4)
    assert block.regime == "larger-base" and block.critical_dim == 92 == expected.critical_dim
    assert block.predicted_limit == pytest.approx(expected.extrapolation_limit)
    assert block.predicted_limit == pytest.approx(129_027, abs=1)
    assert block.retrieval_bound == retrieval_bound(1e6, 128) == 27115 and block.critical_base == 1e4
    yarn = predict_for({"rotary_dim": 128, "train_len": 4096, "rope_theta": 1e4, "rope_type": "yarn"})
    assert yarn.regime == "not-covered" and yarn.retrieval_bound is None
    assert "retrieval bound not" in yarn.note
    broken = predict_for({"rotary_dim": 128, "rope_theta": 1e6})  # no train_len: Liu unusable, retrieval fine
    assert broken.prediction is None and broken.retrieval_bound == 27115
    assert "law inputs unusable" in broken.note


def test_measured_critical_dim_inverts_liu_without_the_ceiling():
    for base in (2e4, 1e6, 5e7):
        limit = law.predict(128, 4096, base, 4096, 1e4).extrapolation_limit
        assert measured_critical_dim(limit, base, 128) == pytest.approx(92, rel=1e-12)
    assert measured_critical_dim(2 * math.pi * 1e6 ** 0.5, 1e6, 64) == pytest.approx(32)
    assert math.isnan(measured_critical_dim(math.nan, 1e6, 64))
    assert math.isnan(measured_critical_dim(900, 1, 64))


def test_summary_has_retrieval_bound_and_measured_critical_dim(tmp_path):
    out = build_report([write_run(tmp_path / "r", zoo_like_rows())], n_boot=200, seed=2, min_samples=1)
    summary = pd.read_csv(out / "summary.csv").set_index("setting")
    for col in ("retrieval_bound", "measured_critical_dim", "measured_critical_dim_ci_low",
                "measured_critical_dim_ci_high", "measured_critical_dim_censored", "critical_dim", "warning"):
        assert col in summary.columns, col
    for setting, theta in (("b1e6", 1e6), ("b5e5", 5e5), ("b1e4", 1e4), ("b300", 300)):
        assert summary.at[setting, "retrieval_bound"] == retrieval_bound(theta, 128)
    assert pd.isna(summary.at["yarn", "retrieval_bound"]) and "retrieval bound not computed" in \
        summary.at["yarn", "note"]
    row = summary.loc["b1e6"]
    # mean nll over the four knees at 8K and 16K; log(ppl) crosses best (2.0) + log 1.5 in between
    knees = (6000, 8000, 9000, 11000)
    g8, g16 = (np.mean([max(0.0, 0.6 * math.log2(L / k)) for k in knees]) for L in (8192, 16384))
    assert row["measured_limit"] == pytest.approx(8192 * 2 ** ((LOG15 - g8) / (g16 - g8)))
    for col, source in (("measured_critical_dim", "measured_limit"), ("measured_critical_dim_ci_low",
                                                                      "measured_ci_low"),
                        ("measured_critical_dim_ci_high", "measured_ci_high")):
        assert row[col] == pytest.approx(128 * math.log(row[source] / (2 * math.pi)) / math.log(1e6))
    dims = [row[f"measured_critical_dim{k}"] for k in ("_ci_low", "", "_ci_high")]
    assert dims[0] < dims[1] < dims[2]
    assert not row["measured_critical_dim_censored"] and row["critical_dim"] == 92
    ratio = row["measured_limit"] / retrieval_bound(1e6, 128)
    assert row["ratio_measured_to_retrieval"] == pytest.approx(ratio)
    censored = summary.loc["b5e5"]  # never fails: censored at 16K, so d_measured is a lower bound
    assert censored["measured_censored"] and censored["measured_critical_dim_censored"]
    lower = 128 * math.log(16384 / (2 * math.pi)) / math.log(5e5)
    assert censored["measured_critical_dim"] == pytest.approx(lower)
    for setting in ("b1e4", "b300", "yarn"):  # tuning-bounded, unbounded, not covered: no d_measured
        assert pd.isna(summary.at[setting, "measured_critical_dim"])
        assert pd.isna(summary.at[setting, "measured_critical_dim_censored"])
    md = (out / "report.md").read_text()
    assert "retrieval bound (Men)" in md and "d_measured [CI]" in md and "\u2265 " in md


def _context(rows, tmp_path) -> analysis.FigureContext:
    figures = registry.task_figures("perplexity")
    frame = load_runs([write_run(tmp_path / "ctx", rows)]).records
    return analysis.analyze(frame, MEASURES, task="perplexity", tables=figures.tables, min_samples=1,
                            columns=figures.columns, n_boot=100)


def test_law_vs_base_table_is_both_laws_on_a_log_grid(tmp_path):
    for task in ("perplexity", "passkey", "longqa"):  # every task's figures get the table
        assert isinstance(registry.task_figures(task).tables["law_vs_base"], LawVsBase)
    ctx = _context(zoo_like_rows(), tmp_path)
    table = ctx.tables["law_vs_base"]
    group = law_group({"rotary_dim": 128, "pretrain_base": 1e4, "train_len": 4096, "tune_len": 4096})
    assert set(table["group"]) == {group}  # yarn is not covered; the 8K-tuned setting is alone in its group
    beta3 = 4096 / (2 * math.pi)
    bases = table["base"].to_numpy()
    assert bases.min() == pytest.approx(150) and bases.max() == pytest.approx(2e6)  # half / twice the span
    assert np.all(np.diff(bases) > 0) and np.isin([beta3, 1e4], bases).all()
    for row in table.itertuples():
        limit = law.predict(128, 4096, row.base, 4096, 1e4).extrapolation_limit
        assert (math.isnan(row.liu_limit) and limit is None) or row.liu_limit == pytest.approx(limit)
    assert table[table["base"] < beta3]["liu_limit"].isna().all()
    at = table.set_index("base")["liu_limit"]
    above = bases[bases > 1e4][0]
    assert at[1e4] == 4096 and above == pytest.approx(1e4) and at[above] == pytest.approx(
        2 * math.pi * 1e4 ** (92 / 128))  # the jump at beta0
    for row in table.iloc[::7].itertuples():
        assert row.retrieval_bound == retrieval_bound(row.base, 128)


def test_limit_vs_base_figure_draws_the_analysis(tmp_path):
    ctx = _context(zoo_like_rows(), tmp_path)
    fig, ax = plt.subplots()
    limit_vs_base(ctx, ax)
    (panel,) = [a for a in fig.axes if a.get_lines()]
    lines = {line.get_gid(): line for line in panel.get_lines() if line.get_gid()}
    table = ctx.tables["law_vs_base"]
    assert list(lines["liu-vs-base"].get_xdata()) == list(table["base"])
    assert list(lines["retrieval-vs-base"].get_ydata()) == pytest.approx(list(table["retrieval_bound"]),
                                                                        nan_ok=True)
    assert lines["liu-vs-base"].get_linestyle() != lines["retrieval-vs-base"].get_linestyle()
    assert list(lines["base-train"].get_ydata()) == [4096, 4096]
    view = ctx.default.settings
    for setting, theta in (("b1e6", 1e6), ("b5e5", 5e5), ("b1e4", 1e4), ("b300", 300)):
        point = lines[f"base-measured:{setting}"]
        assert point.get_xdata()[0] == pytest.approx(theta)
        assert point.get_ydata()[0] == pytest.approx(view.at[setting, "measured_limit"])
    assert lines["base-measured:b5e5"].get_markerfacecolor() == "white"  # censored: open, with an arrow
    assert "base-measured:yarn" not in lines and "base-measured:t8k" not in lines
    span = [p for p in panel.patches if p.get_gid() == "liu-unbounded"]
    assert span and span[0].get_x() == pytest.approx(table["base"].min())
    assert span[0].get_x() + span[0].get_width() == pytest.approx(4096 / (2 * math.pi))
    assert panel.get_xscale() == "log" and panel.get_yscale() == "log"
    assert lines["base-measured:b1e6"].get_label() == "b1e6"  # fine-tuned at its base: the law's own case
    flagged = [dict(r, law_assumes_finetune=r["setting"] == "b1e6") for r in zoo_like_rows()]
    fig, ax = plt.subplots()
    limit_vs_base(_context(flagged, tmp_path / "untuned"), ax)
    (panel,) = [a for a in fig.axes if a.get_lines()]
    labels = {line.get_gid(): line.get_label() for line in panel.get_lines() if line.get_gid()}
    assert labels["base-measured:b1e6"] == "b1e6 \u2020" and labels["base-measured:b1e4"] == "b1e4"


def test_limit_vs_base_in_the_report_only_for_shared_groups(tmp_path):
    out = build_report([write_run(tmp_path / "r", zoo_like_rows())], n_boot=0, min_samples=1)
    assert (out / "perplexity_limit_vs_base.png").is_file()
    md = (out / "report.md").read_text()
    assert "Extrapolation length vs RoPE base" in md and "(perplexity_limit_vs_base.png)" in md
    alone = build_report([write_run(tmp_path / "one", curve_rows("s", 1e6, 9000, samples=2))],
                         n_boot=0, min_samples=1)
    assert not (alone / "perplexity_limit_vs_base.png").exists()
    assert "perplexity/limit_vs_base" not in (alone / "report.md").read_text()  # not applicable: no note
