"""Report figures: the retrieval bound beside Liu's limit on every length figure, coinciding limits and
markers kept visible, legends and captions that say only what is drawn, needle depths that were not
achieved."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from report_records import curve_rows, passkey_rows, write_run  # noqa: E402

from harness.law import liu as law  # noqa: E402
from harness.law.men import retrieval_bound  # noqa: E402
from harness.report import analysis, mvp, overlay, registry  # noqa: E402
from harness.report.build import build_report  # noqa: E402
from harness.report.figures import longqa, passkey, perplexity  # noqa: E402
from harness.report.load import load_runs  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def context(task: str, rows: list[dict], folder, n_boot: int = 50, min_samples: int = 1
            ) -> analysis.FigureContext:
    found = registry.task_figures(task)
    loaded = load_runs([write_run(folder, rows)])
    return analysis.analyze(loaded.records, registry.task_measures(task), task=task,
                            extra=found.extra_measures, tables=found.tables, columns=found.columns,
                            positions=loaded.positions, n_boot=n_boot, min_samples=min_samples)


def gids(ax) -> dict[str, object]:
    return {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


# d = 128, T = 4096: a and b share base 2e4 (Liu 7.7K, retrieval bound inside the view), c has base 1e6
# (Liu 129K: far beyond the 16K grid; retrieval bound 27K: within reach).
SHARED = 2e4


def shared_rows(samples: int = 2) -> list[dict]:
    return (curve_rows("a", SHARED, 6000, samples) + curve_rows("b", SHARED, 6000, samples)
            + curve_rows("c", 1e6, 9000, samples))


def test_ppl_figure_draws_the_retrieval_bound_beside_liu(tmp_path):
    ctx = context("perplexity", shared_rows(), tmp_path / "r")
    fig, ax = plt.subplots()
    perplexity.ppl_vs_length(ctx, ax)
    lines = gids(ax)
    liu = law.predict(128, 4096, SHARED, 4096, 1e4).extrapolation_limit
    assert list(lines["law-predicted:a|b"].get_xdata()) == pytest.approx([liu, liu])
    shared = retrieval_bound(SHARED, 128)
    assert list(lines["law-retrieval:a|b"].get_xdata()) == [shared, shared]
    assert list(lines["law-retrieval:c"].get_xdata()) == [retrieval_bound(1e6, 128)] * 2
    assert lines["law-retrieval:c"].get_color() == ctx.colors["c"]
    assert lines["law-retrieval:a|b"].get_color() == overlay.SHARED_COLOR  # shared: grey, markers tell whose
    assert lines["law-retrieval:c"].get_linestyle() != lines["law-predicted:a|b"].get_linestyle()
    # above the top edge: a triangle per setting at Liu's limit, a diamond per setting at the retrieval bound,
    # stacked (not on top of each other) where the limits coincide
    tops = [line for line in ax.get_lines() if line.get_gid() == "law-top-marker"]
    at_liu = [t for t in tops if t.get_xdata()[0] == pytest.approx(liu)]
    assert sorted(t.get_marker() for t in at_liu) == ["v", "v"]
    assert {tuple(t.get_color()) for t in at_liu} == {tuple(ctx.colors[s]) for s in "ab"}
    assert len({t.get_ydata()[0] for t in at_liu}) == 2
    assert sorted(t.get_marker() for t in tops if t.get_xdata()[0] == shared) == ["D", "D"]
    far = [t.get_text() for t in ax.texts if t.get_gid() == "law-far"]
    assert far == ["Liu 129k \u2192"]  # c's Liu limit (129,027 tokens) lies beyond the view
    labels = legend_texts(ax)
    assert "retrieval bound (Men, B(m) < 0)" in labels and "predicted limit (Liu law)" in labels


def test_every_length_figure_draws_both_limits(tmp_path):
    pk = context("passkey", passkey_rows({"k1e4": (1e4, 512), "k1e5": (1e5, 1024)}, samples=2),
                 tmp_path / "p")
    for fn in (passkey.accuracy_vs_length, passkey.logprob_vs_length):
        fig, ax = plt.subplots()
        fn(pk, ax)
        lines = gids(ax)
        assert list(lines["law-retrieval:k1e4"].get_xdata()) == [retrieval_bound(1e4, 64)] * 2, fn.__name__
        assert "law-predicted:k1e4" in lines and "law-retrieval:k1e5" in lines
    fig, ax = plt.subplots()
    passkey.heatmap_accuracy(pk, ax)
    panel = [a for a in fig.axes if a.get_title() == "k1e4"][0]
    column = [line for line in panel.get_lines() if line.get_gid() == "law-retrieval:k1e4"]
    lengths = np.log([256, 512, 1024, 2048])
    assert column and column[0].get_xdata()[0] == pytest.approx(np.interp(math.log(725), lengths, range(4)))
    qa_rows = [dict(r, task="longqa", score=r["correct"], dataset="synthetic")
               for r in passkey_rows({"q1e4": (1e4, 512), "q1e5": (1e5, 1024)}, samples=2)]
    qa = context("longqa", qa_rows, tmp_path / "q")
    fig, ax = plt.subplots()
    longqa.score_vs_length(qa, ax)
    assert list(gids(ax)["law-retrieval:q1e5"].get_xdata()) == [retrieval_bound(1e5, 64)] * 2


def test_legend_lists_only_what_was_drawn(tmp_path):
    never = context("passkey", passkey_rows({"z1": (1e4, 0), "z2": (1e5, 0)}, accuracy=0.0), tmp_path / "z")
    fig, ax = plt.subplots()
    passkey.accuracy_vs_length(never, ax)  # accuracy 0 everywhere: no measured limit exists
    labels = legend_texts(ax)
    assert "measured limit" not in labels and not any(t.startswith("censored") for t in labels)
    censored = context("perplexity", curve_rows("only", 1e6, 1e9, samples=2), tmp_path / "c")
    fig, ax = plt.subplots()
    perplexity.ppl_vs_length(censored, ax)
    labels = legend_texts(ax)
    assert "censored (\u2265 grid end)" in labels and "measured limit" not in labels
    assert "training length" in labels


def test_measured_vs_predicted_keeps_coinciding_points_visible(tmp_path):
    ctx = context("perplexity", shared_rows(), tmp_path / "r")
    fig, ax = plt.subplots()
    perplexity.measured_vs_predicted(ctx, ax)
    a, b = (gids(ax)[f"mvp:{s}"] for s in "ab")
    assert a.get_ydata()[0] == b.get_ydata()[0]  # the same measured length at the same prediction
    assert b.get_xdata()[0] / a.get_xdata()[0] == pytest.approx(mvp.SPREAD)  # spread apart in x
    assert a.get_markersize() > b.get_markersize() and b.get_zorder() > a.get_zorder()  # small one on top
    labels = legend_texts(ax)
    assert "larger-base regime" in labels and "tuning-bounded (law: \u2265 T_tune)" not in labels
    assert "censored (\u2265, never failed)" not in labels  # nothing censored here
    assert not any(mvp.NO_FINETUNE_MARK in label for label in labels)
    rows = [dict(r, law_assumes_finetune=r["setting"] == "b") for r in shared_rows()]
    fig, ax = plt.subplots()
    perplexity.measured_vs_predicted(context("perplexity", rows, tmp_path / "untuned"), ax)
    labels = legend_texts(ax)  # outside the law's premise: marked where it sits on the law's plot
    assert "b \u2020" in labels and "a" in labels and any(t.startswith("\u2020 base changed") for t in labels)


def test_coinciding_accuracy_curves_stay_visible(tmp_path):
    ctx = context("passkey", passkey_rows({"x": (1e4, 0), "y": (1e5, 0), "w": (1e6, 0)}, accuracy=0.0),
                  tmp_path / "p")
    fig, ax = plt.subplots()
    passkey.accuracy_vs_length(ctx, ax)
    curves = [gids(ax)[f"curve:{s}"] for s in ctx.order]
    levels = sorted(float(c.get_ydata()[0]) for c in curves)
    assert levels == pytest.approx([-passkey.ACCURACY_SPREAD, 0.0, passkey.ACCURACY_SPREAD])
    assert len({c.get_marker() for c in curves}) == 3


def test_chance_line_only_where_it_means_something(tmp_path):
    above = context("passkey", passkey_rows({"s": (1e4, 512)}, samples=2, chance=-0.1), tmp_path / "a")
    fig, ax = plt.subplots()
    said = passkey.logprob_vs_length(above, ax)
    assert "chance (uniform key)" not in legend_texts(ax) and "not drawn" in said
    within = context("passkey", passkey_rows({"s": (1e4, 512)}, samples=2, chance=-4.0), tmp_path / "w")
    fig, ax = plt.subplots()
    said = passkey.logprob_vs_length(within, ax)
    assert "chance (uniform key)" in legend_texts(ax) and "uniform guess over the keys (-4.0 nats)" in said


def test_captions_promise_a_band_only_where_one_is_drawn(tmp_path):
    one = context("perplexity", curve_rows("s", 1e6, 9000, samples=1), tmp_path / "one")
    said = perplexity.ppl_vs_length(one, plt.subplots()[1])
    assert said == "No CI band: fewer than two samples per setting."
    two = context("perplexity", curve_rows("s", 1e6, 9000, samples=3), tmp_path / "two")
    assert perplexity.ppl_vs_length(two, plt.subplots()[1]).startswith("Bands: 95% bootstrap CI")
    run = write_run(tmp_path / "pk", passkey_rows({"s": (1e4, 512), "t": (1e5, 1024)}, samples=1))
    md = (build_report([run], n_boot=50, min_samples=1) / "report.md").read_text()
    assert "band: bootstrap CI" not in md and "Bands:" not in md and "No CI band" in md


def achieved(length: int, depth: float) -> float:
    """At L = 256 the needle lands at 0 or 0.375 whatever was asked (a too-short haystack); else close."""
    if length == 256:
        return 0.0 if depth < 0.3 else 0.375
    return depth + 0.003


def test_heatmap_flags_needle_depths_that_were_not_achieved(tmp_path):
    rows = passkey_rows({"s": (1e4, 512), "t": (1e5, 1024)}, needle_depth=achieved)
    ctx = context("passkey", rows, tmp_path / "p")
    check = ctx.tables["needle_depth_check"]
    flagged = check[check["flagged"]]
    assert len(flagged) == 6 and set(flagged["length"]) == {256.0}  # 3 depths x 2 settings at L = 256
    assert check[check["length"] > 256]["flagged"].sum() == 0  # 0.003 off: within the tolerance
    assert any(n.startswith("needle depth: 6 of 24") for n in ctx.notes)
    fig, ax = plt.subplots()
    said = passkey.heatmap_accuracy(ctx, ax)
    panel = [a for a in fig.axes if a.get_title() == "s"][0]
    hatched = [p for p in panel.patches if p.get_gid() == "depth-flag"]
    assert len(hatched) == 3 and {p.get_x() for p in hatched} == {-0.5}  # the L = 256 column
    assert {t.get_text().split("\n")[-1] for t in panel.texts if "@" in t.get_text()} == {"@0.00", "@0.38"}
    assert "Hatched (6 cells" in said
    out = build_report([write_run(tmp_path / "run", rows)], n_boot=0, min_samples=1)
    md = (out / "report.md").read_text()
    assert "needle depth: 6 of 24" in md and "Hatched (6 cells" in md
    plain = context("passkey", passkey_rows({"s": (1e4, 512)}), tmp_path / "plain")
    assert not plain.tables["needle_depth_check"]["flagged"].any() and not plain.notes


def test_heatmap_panels_keep_each_settings_own_lengths(tmp_path):
    """A setting run on a coarser grid gets its own columns, not grey cells that read as failures."""
    rows = passkey_rows({"fine": (1e4, 512)}) + [r for r in passkey_rows({"coarse": (1e5, 1024)})
                                                  if r["length"] in (256, 1024)]
    fig, ax = plt.subplots()
    passkey.heatmap_accuracy(context("passkey", rows, tmp_path / "p"), ax)
    ticks = {a.get_title(): [t.get_text() for t in a.get_xticklabels()] for a in fig.axes if a.get_title()}
    assert ticks == {"fine": ["256", "512", "1K", "2K"], "coarse": ["256", "1K"]}


def test_a_label_the_font_cannot_draw_is_said_in_the_caption(tmp_path):
    rows = [dict(r, setting="b\ue000") for r in curve_rows("s", 1e6, 9000, samples=3)]
    md = (build_report([write_run(tmp_path / "run", rows)], n_boot=0) / "report.md").read_text()
    assert "missing from the plotting font and show as boxes" in md
