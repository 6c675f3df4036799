"""RULER in the report: each family a task with its chance level and both laws; the effective length as a
definition whose threshold `report --threshold` sets (85.6 and 0.856 alike); the family x length heatmap;
the headline line that opens with the family that fails first, falling back to the answer log-prob."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from report_records import write_run  # noqa: E402

from harness.cli import main  # noqa: E402
from harness.core.errors import InputError  # noqa: E402
from harness.report import analysis, groups, registry  # noqa: E402
from harness.report.base import score_threshold  # noqa: E402
from harness.report.build import build_report  # noqa: E402
from harness.report.figures import ruler  # noqa: E402
from harness.report.load import load_runs  # noqa: E402
from harness.report.verdict import verdicts  # noqa: E402

LENGTHS = (1024, 2048, 4096, 8192)
SETTING = "m:default:1e+05"
# mean score per length; tune_len 1024, so the reference is the 1K score
PROFILES = {
    "niah_single_1": (1.0, 1.0, 1.0, 0.0),  # 0.856 at 4096 x 2^0.144 = 4,530; 0.5 at 4096 x 2^0.5 = 5,793
    "vt": (1.0, 0.7, 0.6, 0.55),  # 0.856 at 1024 x 2^0.48 = 1,428; never below 0.5
    "niah_multikey_1": (1.0, 0.9, 0.9, 0.0),  # 0.856 at 4096 x 2^(0.044/0.9); 0.5 at 4096 x 2^(0.4/0.9)
    "cwe": (0.0, 0.0, 0.0, 0.0),  # at chance (chance_score 0): no length, whatever the threshold
}
EFFECTIVE_856 = {"niah_single_1": 4096 * 2 ** 0.144, "vt": 1024 * 2 ** 0.48,
                 "niah_multikey_1": 4096 * 2 ** (0.044 / 0.9)}
EFFECTIVE_50 = {"niah_single_1": 4096 * 2 ** 0.5, "niah_multikey_1": 4096 * 2 ** (0.4 / 0.9)}


def ruler_rows(profiles=PROFILES, samples: int = 3, setting: str = SETTING, theta: float = 1e5,
               chance: dict[str, float] | None = None, logprob=None) -> list[dict]:
    """RULER records: per family, length and sample the profile's score (+/- 0.01 across samples, so the
    mean is the profile's); `logprob(task, length)` adds the answer log-prob of a fixed answer."""
    rows = []
    for task, scores in profiles.items():
        for length, score in zip(LENGTHS, scores, strict=True):
            for sample in range(samples):
                jitter = 0.0 if score in (0.0, 1.0) else 0.01 * (sample - (samples - 1) / 2)
                row = {"task": task, "setting": setting, "model": "m", "rope_type": "default",
                       "rope_theta": theta, "rope_params": "{}", "rotary_dim": 64, "pretrain_base": 10000.0,
                       "train_len": 1024, "tune_len": 1024, "rope_hash": f"h{setting}", "length": length,
                       "depth": None, "sample": sample, "seed": 0, "status": "ok", "error": None,
                       "law_assumes_finetune": False, "score": score + jitter, "matched": 0, "references": 1,
                       "chance_score": (chance or {}).get(task, 0.0),
                       "task_identity": '{"ruler": "niah"}'}
                if logprob is not None:
                    row.update(answer_logprob=logprob(task, length) - 0.05 * sample, answer_rank=1,
                               chance_logprob=-16.0)
                rows.append(row)
    return rows


def summary_of(tmp_path, rows, name="report", **kw) -> tuple[pd.DataFrame, str]:
    out = build_report([write_run(tmp_path / "run", rows)], tmp_path / name, n_boot=40, **kw)
    return pd.read_csv(out / "summary.csv"), (out / "headline.txt").read_text()


def effective(summary: pd.DataFrame, measure: str = "ruler-effective") -> dict[str, float]:
    rows = summary[summary["measure"] == measure]
    return dict(zip(rows["task"], rows["measured_limit"].astype(float), strict=True))


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_every_ruler_task_shares_the_ruler_figure_module_and_its_group():
    for task in ruler.ORDER:
        found = registry.task_figures(task)
        assert set(found.figures) == {"score_vs_length", "logprob_vs_length"}, task
        assert found.group is ruler.GROUP and found.threshold_measures == ("ruler-effective",)
    # a task with a module of its own name keeps it, and gets no group
    assert registry.task_figures("passkey").group is None
    assert "heatmap_accuracy" in registry.task_figures("passkey").figures


def test_effective_length_per_family_at_default_threshold_and_a_family_at_chance_gets_none(tmp_path):
    summary, _ = summary_of(tmp_path, ruler_rows())
    found = effective(summary)
    for task, expected in EFFECTIVE_856.items():
        assert found[task] == pytest.approx(expected, rel=1e-3), task
    assert math.isnan(found["cwe"])
    cwe = summary[(summary["task"] == "cwe") & (summary["measure"] == "ruler-effective")].iloc[0]
    assert "at chance" in cwe["warning"] and cwe["chance_value"] == 0.0
    assert (summary[summary["measure"] == "ruler-effective"]["threshold_value"] == 0.856).all()
    # both laws beside every family's length, with CIs where samples differ
    vt = summary[(summary["task"] == "vt") & (summary["measure"] == "ruler-effective")].iloc[0]
    assert vt["predicted_limit"] > 0 and vt["retrieval_bound"] > 0
    assert vt["ratio_measured_to_predicted"] == pytest.approx(vt["measured_limit"] / vt["predicted_limit"])
    assert vt["measured_ci_low"] <= vt["measured_limit"] <= vt["measured_ci_high"]


@pytest.mark.parametrize("given", [[50.0], [0.5]])
def test_threshold_sets_the_effective_length_on_either_scale_and_nothing_else(tmp_path, given):
    summary, headline = summary_of(tmp_path, ruler_rows(), thresholds=given)
    found = effective(summary)
    for task, expected in EFFECTIVE_50.items():
        assert found[task] == pytest.approx(expected, rel=1e-3), task
    vt = summary[(summary["task"] == "vt") & (summary["measure"] == "ruler-effective")].iloc[0]
    assert vt["measured_censored"] and vt["measured_limit"] == 8192  # never below 0.5 on the grid
    assert math.isnan(found["cwe"])
    assert (summary[summary["measure"] == "ruler-effective"]["threshold_value"] == 0.5).all()
    assert "RULER score >= 0.5" in vt["definition"] or ">= 0.5" in vt["definition"]
    # the default definition (0.5) is the task's, not the flag's: unchanged by --threshold 85.6
    other, _ = summary_of(tmp_path, ruler_rows(), name="other", thresholds=[85.6])
    assert effective(other) == pytest.approx(effective(summary_of(tmp_path, ruler_rows(), name="plain")[0]),
                                             nan_ok=True)
    assert effective(other, "ruler-score") == pytest.approx(effective(summary, "ruler-score"), nan_ok=True)
    # and the family that fails first follows the threshold: vt at 0.856, niah_multikey_1 at 0.5
    line = headline.splitlines()[1]
    assert "fails first: niah_multikey_1" in line


def test_threshold_values_are_checked_and_read_as_percent_above_one():
    assert score_threshold(85.6) == pytest.approx(0.856)
    assert score_threshold(0.856) == pytest.approx(0.856)
    assert score_threshold(1) == 1.0 and score_threshold(100) == 1.0
    for bad in (0, -1, 101, math.nan):
        with pytest.raises(ValueError):
            score_threshold(bad)


def test_threshold_flag_reaches_the_report_and_refuses_nonsense(tmp_path):
    run = write_run(tmp_path / "run", ruler_rows())
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--bootstrap", "0",
                 "--threshold", "50,85.6"]) == 0
    summary = pd.read_csv(tmp_path / "rep" / "summary.csv")
    rows = summary[(summary["measure"] == "ruler-effective") & (summary["task"] == "niah_single_1")]
    assert sorted(rows["threshold_value"]) == pytest.approx([0.5, 0.856])
    assert sorted(rows["measured_limit"]) == pytest.approx(sorted([EFFECTIVE_50["niah_single_1"],
                                                                   EFFECTIVE_856["niah_single_1"]]), rel=1e-3)
    with pytest.raises(InputError, match="--threshold 150"):
        build_report([run], tmp_path / "bad", thresholds=[150])
    assert not (tmp_path / "bad").exists()


def test_headline_opens_with_the_family_that_fails_first(tmp_path):
    _, headline = summary_of(tmp_path, ruler_rows())
    lines = headline.splitlines()
    assert lines[0] == "RULER:"  # the group's line before its families' own
    line = lines[1]
    assert f"{SETTING}: 4 families" in line
    assert "fails first: vt limit at 1,428 [" in line
    # then the others by length, and the family at chance with its reason
    assert "; then niah_multikey_1 4,237 [" in line and line.index("then niah_multikey_1") < line.index(
        "niah_single_1 4,526")
    assert "no length: cwe (at chance" in line
    assert "Liu's limit" in line and "retrieval bound" in line
    # each family keeps its own lines below
    assert "vt:" in lines and "cwe:" in lines


def test_verdict_speaks_for_ruler_in_one_clause(tmp_path):
    rows = ruler_rows()
    loaded = load_runs([write_run(tmp_path / "run", rows)])
    contexts = []
    for task in PROFILES:
        contexts.append(analysis.analyze(loaded.records[loaded.records["task"] == task],
                                         registry.task_measures(task), task=task, n_boot=20,
                                         threshold_measures=("ruler-effective",)))
    from harness.report.headline import headline

    gathered = groups.gather(contexts, {t: ruler.GROUP for t in PROFILES})
    table = groups.with_group_rows(headline(contexts), gathered)
    (verdict,) = verdicts(table)
    # one clause for the four families (not one each), naming the one that fails first and its length
    assert verdict.text.count("fails first") == 1 and "RULER (vt fails first" in verdict.text
    assert "breaks at 1,428" in verdict.text
    assert not any(task in verdict.text for task in ("niah_single_1", "niah_multikey_1", "cwe"))


def test_a_family_above_chance_but_below_the_bar_at_its_reference_fails_first(tmp_path):
    profiles = {**PROFILES, "fwe": (0.6, 0.6, 0.5, 0.4)}
    _, headline = summary_of(tmp_path, ruler_rows(profiles, chance={"fwe": 0.1}))
    line = headline.splitlines()[1]
    assert "fails first: fwe" in line and "already below 0.856" in line
    assert line.index("fails first: fwe") < line.index("then vt 1,428")


def test_all_scores_zero_falls_back_to_the_answer_logprob(tmp_path):
    zero = {task: (0.0,) * 4 for task in ("niah_single_1", "vt")}

    def logprob(task: str, length: int) -> float:  # vt loses its answer from 2K, niah from 4K
        knee = 2048 if task == "vt" else 4096
        return -1.0 if length < knee else -9.0

    summary, headline = summary_of(tmp_path, ruler_rows(zero, logprob=logprob))
    assert effective(summary).keys() == {"niah_single_1", "vt"}
    assert all(math.isnan(v) for v in effective(summary).values())
    line = headline.splitlines()[1]
    assert "no measured length by RULER effective length" in line
    assert "by answer log-prob" in line and "fails first: vt" in line
    # a family's own line falls back too: its score is at chance, its log-prob is not
    vt_line = headline.splitlines()[headline.splitlines().index("vt:") + 1]
    assert vt_line.count("no measured length") == 1 and "answer log-prob limit at" in vt_line


def test_family_heatmap_has_one_row_per_family_and_both_laws(tmp_path):
    rows = ruler_rows() + ruler_rows(setting="m:default:1e+04", theta=1e4)
    out = build_report([write_run(tmp_path / "run", rows)], tmp_path / "rep", n_boot=20)
    assert (out / "ruler_family_heatmap.png").is_file()
    html = (out / "report.md").read_text()
    assert "ruler_family_heatmap.png" in html

    loaded = load_runs([write_run(tmp_path / "run2", rows)])
    contexts = [analysis.analyze(loaded.records[loaded.records["task"] == task], registry.task_measures(task),
                                 task=task, n_boot=20) for task in PROFILES]
    (gctx,) = groups.gather(contexts, {t: ruler.GROUP for t in PROFILES})
    assert gctx.tasks == ["niah_single_1", "niah_multikey_1", "vt", "cwe"]  # RULER's own order
    fig, ax = plt.subplots()
    ruler.family_heatmap(gctx, ax)
    panels = [a for a in fig.axes if a.images and a.get_title()]
    assert [a.get_title() for a in panels] == gctx.order and len(panels) == 2
    for panel in panels:
        assert panel.images[0].get_array().shape == (4, len(LENGTHS))
        labels = [t.get_text() for t in panel.get_yticklabels()]
        assert labels == (gctx.tasks if panel is panels[0] else [""] * 4)  # one row per family, named once
        hatched = {p.get_gid() for p in panel.patches if (p.get_gid() or "").startswith("row-")}
        assert hatched == {"row-chance:cwe"}  # the family at chance, and only it
        gids = {line.get_gid() for line in panel.get_lines()}
        assert f"effective:{panel.get_title()}:vt" in gids
        # Liu's limit and the retrieval bound: a line inside the grid, else named at its edge
        shown = gids | {t.get_gid() for t in panel.texts}
        for kind in ("law-predicted", "law-retrieval"):
            assert any(g and g.split(":")[0] in (kind, f"{kind}-far") for g in shown), (kind, shown)


def test_the_verdict_puts_ruler_next_to_passkey_and_the_group_section_before_its_families(tmp_path):
    from report_records import passkey_rows

    rows = ruler_rows() + passkey_rows({SETTING: (1e5, 512)}, samples=3)
    out = build_report([write_run(tmp_path / "run", rows)], tmp_path / "rep", n_boot=20)
    report = (out / "report.md").read_text()
    verdict = next(line for line in report.splitlines() if line.startswith(f"- m: {SETTING}"))
    assert "passkey accuracy breaks at" in verdict and "; RULER (vt fails first" in verdict
    heads = [line for line in report.splitlines() if line.startswith("## ")]
    at = heads.index("## RULER: 4 tasks together")
    assert heads[at - 1] == "## Task: passkey"
    members = ("niah_single_1", "niah_multikey_1", "vt", "cwe")  # RULER's own order
    assert heads[at + 1:at + 5] == [f"## Task: {t}" for t in members]


def test_a_ruler_run_at_chance_everywhere_says_so_in_one_clause(tmp_path):
    zero = {task: (0.0,) * 4 for task in ("niah_single_1", "vt")}
    said = "RULER: no task has a length by RULER effective length (RULER score >= 0.856) (2 at chance)"
    for logprob, nor in ((None, "."), (lambda task, length: -30.0, ", nor by answer log-prob >= best - 2.")):
        rows = ruler_rows(zero, logprob=logprob)  # -30 nats: below chance (-16) at every length
        out = build_report([write_run(tmp_path / "run", rows)], tmp_path / "rep", n_boot=20)
        report = (out / "report.md").read_text()
        verdict = next(line for line in report.splitlines() if line.startswith(f"- m: {SETTING}"))
        assert verdict.endswith(said + nor)
    assert "ruler_family_heatmap.png" in report.split("## What was measured")[0]  # the opening's figure
