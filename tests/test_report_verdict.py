"""The report's first screen: one verdict per model family (real models first) and one figure; the report
command's console answer; legends that explain every line style and marker size."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from report_records import curve_rows, passkey_rows, write_run  # noqa: E402

from harness.cli import main  # noqa: E402
from harness.law import liu as law  # noqa: E402
from harness.report import analysis, mvp, registry  # noqa: E402
from harness.report.base import DEFAULT_MIN_SAMPLES  # noqa: E402
from harness.report.build import build_report  # noqa: E402
from harness.report.figures import passkey, perplexity  # noqa: E402
from harness.report.load import load_runs  # noqa: E402
from harness.report.verdict import pick_setting  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def context(task: str, rows: list[dict], folder, positions: list[dict] | None = None, n_boot: int = 50
            ) -> analysis.FigureContext:
    found = registry.task_figures(task)
    loaded = load_runs([write_run(folder, rows, positions)])
    return analysis.analyze(loaded.records, registry.task_measures(task), task=task,
                            extra=found.extra_measures, tables=found.tables, columns=found.columns,
                            positions=loaded.positions, n_boot=n_boot, min_samples=1)


def position_rows(setting: str, knee: float, samples: int, length: int = 16384) -> list[dict]:
    """Per-position loss flat at 2.0 up to `knee`, then +0.6 nats per doubling (plus 0.05 per sample)."""
    rows = []
    for s in range(samples):
        for start in range(1, length, 256):
            end = min(length, start + 256)
            mid = (start + end) / 2
            rows.append({"task": "perplexity", "setting": setting, "sample": s, "length": length,
                         "pos_start": start, "pos_end": end, "tokens": end - start,
                         "nll": 2.0 + 0.6 * max(0.0, math.log2(mid / knee)) + 0.05 * s})
    return rows


def zoo_rows() -> list[dict]:
    """Three fine-tuned zoo settings, each measured (ppl@L: no positions), 3 samples."""
    return [dict(r, model=f"zoo:base-{theta:g}") for theta, knee in ((1e5, 3000), (5e5, 5000), (1e6, 7000))
            for r in curve_rows(f"z{theta:g}", theta, knee, 3)]


def test_the_report_opens_with_one_verdict_per_family_real_models_first(tmp_path):
    real = [dict(r, model="real-lm") for r in curve_rows("native", 1e6, 9000, 1)]  # below the evidence bar
    out = build_report([write_run(tmp_path / "run", zoo_rows() + real)], n_boot=50)
    md = (out / "report.md").read_text()
    opening = md[md.index("## Verdict"):md.index("## What was measured")]
    lines = [line for line in opening.splitlines() if line.startswith("- ")]
    assert len(lines) == 2  # one per family, not one per setting
    assert lines[0].startswith("- real-lm: native (") and lines[1].startswith("- the zoo: ")
    assert "no length measured (insufficient samples: 1 per length, fewer than 3" in lines[0]
    summary = pd.read_csv(out / "summary.csv").set_index("setting")
    chosen = lines[1].split(": ")[1].split(",")[0]
    row = summary.loc[chosen]
    assert f"1 of its 3 settings (Liu's limit {row['predicted_limit']:,.0f}" in lines[1]
    assert (f"ppl@L breaks at {row['measured_limit']:,.0f} [{row['measured_ci_low']:,.0f}, "
            f"{row['measured_ci_high']:,.0f}]: {row['ratio_measured_to_predicted']:.2f}x Liu, "
            f"{row['ratio_measured_to_retrieval']:.2f}x Men") in lines[1]
    ratios = summary["ratio_measured_to_predicted"].dropna()
    assert (f"Over its 3 fine-tuned settings with a ppl@L limit and a prediction: {ratios.min():.2f}x to "
            f"{ratios.max():.2f}x Liu.") in lines[1]
    # the real model has no figure with a measured length: the zoo's measured vs predicted comes up, once
    moved = "perplexity_zoo_measured_vs_predicted.png"
    assert opening.count(f"]({moved})") == 1 and md.count(f"]({moved})") == 1
    assert f"Figure {moved}: shown at the top of the report" in md
    html = (out / "report.html").read_text()
    assert html.index("<h2>Verdict</h2>") < html.index("<img") < html.index("<h2>What was measured</h2>")


def test_a_real_model_with_per_position_loss_shows_its_loss_figure_first(tmp_path):
    rows = (curve_rows("native", 1e6, 9000, 3, train_len=4096, tune_len=4096)
            + curve_rows("b=1e7 eval", 1e7, 12000, 3, law_assumes_finetune=True))
    positions = position_rows("native", 9000, 3) + position_rows("b=1e7 eval", 12000, 3)
    out = build_report([write_run(tmp_path / "run", rows, positions)], n_boot=50)
    md = (out / "report.md").read_text()
    opening = md[md.index("## Verdict"):md.index("## What was measured")]
    (line,) = [line for line in opening.splitlines() if line.startswith("- ")]
    assert line.startswith("- tiny: native, 1 of its 2 settings")  # inside the law's premise: the native one
    row = pd.read_csv(out / "summary.csv").query("setting == 'native' and measure == 'position-loss'").iloc[0]
    assert f"per-position loss breaks at {row['measured_limit']:,.0f} [" in line
    assert opening.index("](perplexity_loss_vs_position.png)") > opening.index(line)
    assert md.count("](perplexity_loss_vs_position.png)") == 1


def headline_rows(**settings: dict) -> pd.DataFrame:
    base = {"task_name": "perplexity", "family": "f", "measure_name": "per-position loss", "measured": 1000.0,
            "ci_low": 900.0, "ci_high": 1100.0, "censored": False, "ratio_liu": 1.0, "untuned": False,
            "warning": ""}
    return pd.DataFrame([{**base, "setting": name, **values} for name, values in settings.items()])


def test_the_verdict_speaks_for_the_setting_that_tests_the_law_best():
    rows = headline_rows(untuned={"untuned": True, "ci_low": 999.0, "ci_high": 1001.0},
                         wide={"ci_low": 500.0, "ci_high": 1500.0},
                         narrow={"ci_low": 950.0, "ci_high": 1050.0},
                         warned={"warning": "degrades inside its tuning length", "ci_low": 999.0,
                                 "ci_high": 1001.0},
                         nothing={"measured": math.nan, "ci_low": math.nan, "ci_high": math.nan})
    assert pick_setting(rows) == "narrow"  # inside the premise, clean, the narrowest relative CI
    assert pick_setting(rows[rows["setting"] != "narrow"]) == "wide"  # a clean one before a warned one
    assert pick_setting(rows[rows["setting"].isin(["untuned", "nothing"])]) == "nothing"  # premise first


def test_report_prints_its_headline_and_the_law_inputs_it_was_given(tmp_path, capsys):
    run = write_run(tmp_path / "run", curve_rows("s", 1e6, 9000, 3))
    assert main(["report", str(run), "--out", str(tmp_path / "a"), "--bootstrap", "0"]) == 0
    plain = capsys.readouterr().out
    assert main(["report", str(run), "--out", str(tmp_path / "b"), "--bootstrap", "0",
                 "--pretrain-base", "5e4"]) == 0
    flagged = capsys.readouterr().out
    for out, text in ((tmp_path / "a", plain), (tmp_path / "b", flagged)):
        headline = (out / "headline.txt").read_text()
        assert text.endswith("\nWhat was measured (the measured limit against Liu's law and the retrieval "
                             "bound):\n" + headline)
    before = law.predict(128, 4096, 1e6, 4096, 1e4).extrapolation_limit
    after = law.predict(128, 4096, 1e6, 4096, 5e4).extrapolation_limit
    assert f"Liu's limit ({before:,.0f})" in plain and f"Liu's limit ({after:,.0f})" in flagged
    assert "law inputs from the flags (no rerun): pretrain_base = 50000 for every setting" in flagged
    assert "law inputs from the flags" not in plain


def test_the_default_jobs_real_model_meets_the_evidence_bar():
    from harness.run import suite

    quick = suite.load_suite("quick", suite.Flags(dry_run=True, no_progress=True))
    real = next(t for t in quick.tasks if t.name == "perplexity" and t.settings == ["SmolLM2-135M"])
    assert real.params.samples >= DEFAULT_MIN_SAMPLES  # a measured length with a CI, not "insufficient"
    assert max(real.params.lengths) > 12007  # past Liu's limit for SmolLM2-135M: the cliff is in the grid


# --------------------------------------------------------------------------------------------- legends


def legend_entries(legend) -> dict[str, object]:
    return {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles,
                                                             strict=True)}


def test_heatmap_key_names_every_kind_of_vertical_line(tmp_path):
    fig, ax = plt.subplots()
    passkey.heatmap_accuracy(context("passkey", passkey_rows({"s": (1e4, 512)}), tmp_path / "a"), ax)
    drawn = {line.get_gid().split(":")[0]: line for axis in fig.axes for line in axis.get_lines()
             if line.get_gid()}
    (legend,) = fig.legends
    entries = legend_entries(legend)
    kinds = {"training length": "law-train", "predicted limit (Liu law)": "law-predicted",
             "retrieval bound (Men, B(m) < 0)": "law-retrieval"}
    assert list(entries) == list(kinds)  # train 256, Liu 256 (tuning-bounded) and Men 725 lie in the grid
    for label, gid in kinds.items():
        assert entries[label].get_linestyle() == drawn[gid].get_linestyle()  # the key shows what is drawn
    tuned = [dict(r, tune_len=1024) for r in passkey_rows({"s": (1e4, 512)})]
    fig, ax = plt.subplots()
    passkey.heatmap_accuracy(context("passkey", tuned, tmp_path / "b"), ax)
    window = [line for line in ax.get_lines() if line.get_gid() == "law-tune:s"]
    assert len(window) == 1 and window[0].get_xdata()[0] == 2  # 1K: the third column
    assert "tuning length (the window)" in legend_entries(fig.legends[0])


def shared_rows() -> list[dict]:
    """a and b share base 2e4 (one predicted limit, one base); c has base 1e6."""
    return curve_rows("a", 2e4, 6000, 3) + curve_rows("b", 2e4, 6000, 3) + curve_rows("c", 1e6, 9000, 3)


def test_measured_vs_predicted_says_what_marker_size_and_bars_mean(tmp_path):
    fig, ax = plt.subplots()
    perplexity.measured_vs_predicted(context("perplexity", shared_rows(), tmp_path / "r"), ax)
    legend = ax.get_legend()
    entries = legend_entries(legend)
    assert any(label.startswith("large to small: settings sharing a predicted limit") for label in entries)
    a, b = ([line for line in ax.get_lines() if line.get_gid() == f"mvp:{s}"][0] for s in "ab")
    shown = {line.get_markersize() for line in legend.findobj(Line2D) if line.get_marker() == "o"}
    assert {a.get_markersize(), b.get_markersize()} <= shown and a.get_markersize() > b.get_markersize()
    assert "95% CI over samples" in entries
    fig, ax = plt.subplots()
    perplexity.measured_vs_predicted(context("perplexity", curve_rows("c", 1e6, 9000, 3), tmp_path / "one"),
                                     ax)
    assert not any(label.startswith("large to small") for label in legend_entries(ax.get_legend()))
    fig, ax = plt.subplots()
    perplexity.measured_vs_predicted(context("perplexity", shared_rows(), tmp_path / "no-ci", n_boot=0), ax)
    assert "95% CI over samples" not in legend_entries(ax.get_legend())  # no bar drawn, none explained


def test_limit_vs_base_says_what_marker_size_means(tmp_path):
    fig, ax = plt.subplots()
    perplexity.limit_vs_base(context("perplexity", shared_rows(), tmp_path / "r"), ax)
    labels = list(legend_entries(ax.get_legend()))
    assert any(label.startswith("large to small: settings sharing a base") for label in labels)
    assert "95% CI over samples" in labels
    sizes = {line.get_gid(): line.get_markersize() for line in ax.get_lines()
             if (line.get_gid() or "").startswith("base-measured:")}
    assert sizes["base-measured:a"] == mvp.marker_size(0, 2) > sizes["base-measured:b"]
