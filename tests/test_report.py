"""The reporting layer on hand-built records with a known knee (no model, no torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from test_metrics import log_between, step_buckets  # noqa: E402

from harness.cli import main as cli_main  # noqa: E402
from harness.core.errors import InputError  # noqa: E402
from harness.law import liu as law  # noqa: E402
from harness.report import analysis, overlay, plots, registry  # noqa: E402
from harness.report.base import NoData  # noqa: E402
from harness.report.build import build_report  # noqa: E402
from harness.report.figures.perplexity import FIGURES, TABLES, loss_vs_position, ppl_vs_length  # noqa: E402
from harness.report.load import load_runs  # noqa: E402
from tasks.perplexity import MEASURE, MEASURES, POSITION_LOSS  # noqa: E402

LENGTHS = [1024, 2048, 4096, 8192, 16384]
LOG15 = math.log(1.5)


def knee_nll(length: int, knee: float) -> float:
    """Flat 2.0 up to the knee, then +0.6 nats per doubling."""
    return 2.0 + 0.6 * max(0.0, math.log2(length / knee))


def record(setting: str, theta: float, length: int, sample: int, nll: float | None, *, status: str = "ok",
           train_len: int = 4096, tune_len: int | None = 4096, rope_type: str = "default") -> dict:
    return {
        "task": "perplexity", "setting": setting, "model": "tiny", "rope_type": rope_type,
        "rope_theta": theta,
        "rope_params": "{}", "rotary_dim": 128, "pretrain_base": 10000.0, "train_len": train_len,
        "tune_len": tune_len, "rope_hash": f"h{theta:g}", "length": length, "depth": None, "sample": sample,
        "seed": 0, "status": status,
        "error": None if status == "ok" else "CUDA out of memory (planner estimate)",
        "dtype": "float32", "attn": "sdpa", "plan": "single", "law_assumes_finetune": False,
        "ppl": math.exp(nll) if nll is not None else None, "nll": nll, "tokens": length - 1, "bos": True,
        "doc_id": 0, "offset": 0,
    }


def write_run(folder: Path, rows: list[dict], positions: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if positions:
        (folder / "positions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in positions))
    return folder


def position_rows(setting: str, theta: float, knee: float, samples: int, length: int = 16384) -> list[dict]:
    rows = []
    for s in range(samples):
        for start in range(1, length, 512):
            end = min(length, start + 512)
            mid = (start + end) / 2
            rows.append({"task": "perplexity", "setting": setting, "rope_hash": f"h{theta:g}", "sample": s,
                         "length": length, "pos_start": start, "pos_end": end,
                         "nll": knee_nll(mid, knee) + 0.01 * s, "tokens": end - start})
    return rows


def curve_rows(setting: str, theta: float, knee: float, samples: int, noise: float = 0.0, **kw) -> list[dict]:
    rng = np.random.default_rng(1)
    return [record(setting, theta, L, s, knee_nll(L, knee) + noise * rng.standard_normal(), **kw)
            for s in range(samples) for L in LENGTHS]


def ppl_ctx(rows: list[dict], **kw) -> analysis.FigureContext:
    kw.setdefault("min_samples", 1)  # these curves test the rules; the evidence bar has its own tests
    frame = load_runs([write_run_tmp(rows)]).records
    return analysis.analyze(frame, MEASURE, task="perplexity", **kw)


_TMP: list[Path] = []


def write_run_tmp(rows: list[dict]) -> Path:
    return write_run(_TMP[0] / f"run{len(list(_TMP[0].iterdir()))}", rows)


@pytest.fixture(autouse=True)
def _tmp(tmp_path):
    _TMP[:] = [tmp_path / "auto"]
    _TMP[0].mkdir()
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------- measured length
# (measured_limit and position_limit themselves: test_metrics.py)


def test_summary_single_sample_has_empty_ci_and_law_prediction():
    ctx = ppl_ctx(curve_rows("b1e6", 1e6, 6000, samples=1)).default
    row = ctx.settings.loc["b1e6"]
    assert row["n_samples"] == 1
    assert math.isnan(row["measured_ci_low"]) and math.isnan(row["measured_ci_high"])
    assert row["measured_limit"] == pytest.approx(6000 * 2 ** (LOG15 / 0.6))
    expected = law.predict(128, 4096, 1e6, 4096, 10000.0)
    assert row["regime"] == "larger-base" == expected.regime
    assert row["predicted_limit"] == pytest.approx(expected.extrapolation_limit)
    ratio = row["measured_limit"] / expected.extrapolation_limit
    assert row["ratio_measured_to_predicted"] == pytest.approx(ratio)
    assert ctx.table["ci_low"].isna().all()


def test_bootstrap_ci_brackets_the_estimate_and_is_seeded():
    rows = curve_rows("b1e6", 1e6, 6000, samples=8, noise=0.05)
    a = ppl_ctx(rows, n_boot=300, seed=3).default.settings.loc["b1e6"]
    b = ppl_ctx(rows, n_boot=300, seed=3).default.settings.loc["b1e6"]
    assert a["measured_ci_low"] <= a["measured_limit"] <= a["measured_ci_high"]
    assert a["measured_ci_low"] < a["measured_ci_high"]
    assert (a["measured_ci_low"], a["measured_ci_high"]) == (b["measured_ci_low"], b["measured_ci_high"])


# ------------------------------------------------------------------------------- per-position measured length


def step_position_rows(setting: str, theta: float, steps: list[int], length: int = 4096) -> list[dict]:
    """Sample s: loss 2.0 (+0.01 s) before steps[s], 4.0 from it on (64-token buckets of one 4K pass)."""
    rows = []
    for s, step in enumerate(steps):
        starts, ends, _, loss, tokens = step_buckets(step, length)
        rows += [{"task": "perplexity", "setting": setting, "rope_hash": f"h{theta:g}", "sample": s,
                  "length": length,
                  "pos_start": int(a), "pos_end": int(b), "nll": float(v) + 0.01 * s, "tokens": int(t)}
                 for a, b, v, t in zip(starts, ends, loss, tokens, strict=True)]
    return rows


def test_position_loss_in_the_report_with_bootstrap_ci(tmp_path):
    kw = {"train_len": 512, "tune_len": 512}
    rows = curve_rows("a", 1e5, 600, samples=4, **kw) + curve_rows("one", 1e6, 600, samples=1, **kw)
    positions = (step_position_rows("a", 1e5, [1025, 1025, 2049, 2049])
                 + step_position_rows("one", 1e6, [1025]))
    run = write_run(tmp_path / "r", rows, positions)
    out = build_report([run], n_boot=200, seed=1, deltas=[0.6, 1.0], min_samples=1)
    summary = pd.read_csv(out / "summary.csv")
    pos = summary[summary["measure"] == "position-loss"]
    assert len(summary[summary["measure"] == "ppl@L"]) == 2 and len(pos) == 4  # one row per delta
    one = pos[(pos["setting"] == "one") & (pos["delta"] == 1.0)].iloc[0]
    assert one["measured_limit"] == pytest.approx(math.sqrt(992.5 * 1056.5))
    assert not one["measured_censored"] and pd.isna(one["measured_ci_low"]) and one["n_samples"] == 1
    a = pos[(pos["setting"] == "a") & (pos["delta"] == 0.6)].iloc[0]
    # With a share p of the samples stepping at 1025 (the rest at 2049), the mean curve climbs 2p nats at
    # 1025:
    # smoothed 2 + 2p/3 and 2 + 4p/3 around the step. All samples (p = 1/2): 2.33 | 2.67 straddle 2.6 at 4/5.
    assert a["measured_limit"] == pytest.approx(log_between(992.5, 1056.5, (0.6 - 1 / 3) / (1 / 3)))
    assert a["n_samples"] == 4 and not a["measured_censored"]
    # Resamples with p = 1 (2 + 2/3 already at the last low bucket: 9/10 of the way from the one before) and
    # p = 0 (the same at the 2049 step) each come up with probability 1/16 > 2.5%: they are the CI's ends.
    assert a["measured_ci_low"] == pytest.approx(log_between(928.5, 992.5, 0.9))
    assert a["measured_ci_high"] == pytest.approx(log_between(1952.5, 2016.5, 0.9))
    again = pd.read_csv(build_report([run], tmp_path / "again", n_boot=200, seed=1, deltas=[0.6, 1.0],
                                     min_samples=1) / "summary.csv")
    pd.testing.assert_frame_equal(summary, again)  # seeded
    assert (out / "perplexity_measured_vs_predicted_position_loss.png").is_file()
    md = (out / "report.md").read_text()
    assert "`position-loss`" in md and "`ppl@L` (default)" in md and "figure perplexity" not in md
    table = pd.read_csv(out / "table.csv")
    assert set(table["metric"]) == {"ppl@L"}  # table.csv stays per length


def test_position_loss_left_out_without_positions_and_marked_on_the_loss_figure(tmp_path):
    no_pos = write_run(tmp_path / "plain", curve_rows("s", 1e6, 9000, samples=2))
    summary = pd.read_csv(build_report([no_pos], n_boot=0) / "summary.csv")
    assert list(summary["measure"]) == ["ppl@L"]
    assert "measured length 'position-loss' left out" in (no_pos / "report" / "report.md").read_text()
    run = write_run(tmp_path / "r", curve_rows("s", 1e6, 9000, samples=2, train_len=512, tune_len=512),
                    step_position_rows("s", 1e6, [1025, 1025]))
    loaded = load_runs([run])
    ctx = analysis.analyze(loaded.records, MEASURES, task="perplexity", positions=loaded.positions, n_boot=0,
                           tables=TABLES, min_samples=1)
    assert list(ctx.analyses) == ["ppl@L", "position-loss"] and ctx.default.spec is MEASURE
    view = ctx.measure("position-loss")
    assert view.spec is POSITION_LOSS and view.delta == 0.5 and view.factor is None
    fig, ax = plt.subplots()
    loss_vs_position(ctx, ax)
    mark = [line for line in ax.get_lines() if line.get_gid() == "measured:s"][0]
    assert mark.get_xdata()[0] == pytest.approx(view.settings.loc["s", "measured_limit"])
    assert mark.get_ydata()[0] == pytest.approx(2.5 + 0.005)  # reference (2.0 + mean offset) + delta
    with pytest.raises(NoData, match="left out: no positions"):
        analysis.analyze(loaded.records, MEASURES, task="perplexity", n_boot=0).measure("position-loss")


# ----------------------------------------------------------------------------------------------- figures


def _settings_rows():
    return (curve_rows("b1e4", 1e4, 4096, samples=2) + curve_rows("b5e5", 5e5, 9000, samples=2)
            + curve_rows("b1e6", 1e6, 60000, samples=2) + curve_rows("b300", 300, 1e9, samples=2))


def test_law_overlay_lines_sit_at_law_values():
    ctx = ppl_ctx(_settings_rows(), n_boot=50)
    fig, ax = plt.subplots()
    ppl_vs_length(ctx, ax)
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    for setting, theta in (("b1e4", 1e4), ("b5e5", 5e5), ("b1e6", 1e6)):
        expected = law.predict(128, 4096, theta, 4096, 10000.0).extrapolation_limit
        xs = lines[f"law-predicted:{setting}"].get_xdata()
        assert list(xs) == pytest.approx([expected, expected])
        assert lines[f"law-predicted:{setting}"].get_color() == ctx.colors[setting]
    assert "law-predicted:b300" not in lines  # unbounded: no predicted limit
    train = [g for g in lines if g.startswith("law-train:")]
    assert len(train) == 1 and list(lines[train[0]].get_xdata()) == [4096, 4096]
    # 129K (base 1e6) lies far beyond the 16K grid: the line exists but the view stays near the data.
    assert ax.get_xlim()[1] < 100_000
    measured = ctx.default.settings.loc["b1e4", "measured_limit"]
    assert lines["measured:b1e4"].get_xdata()[0] == pytest.approx(measured)


def test_overlay_with_distinct_train_lengths_uses_curve_colours():
    rows = curve_rows("a", 1e6, 6000, samples=1) + curve_rows("b", 1e6, 6000, samples=1, train_len=2048,
                                                                tune_len=2048)
    ctx = ppl_ctx(rows, n_boot=0)
    fig, ax = plt.subplots()
    plots.plot_metric_curves(ax, ctx, ctx.default)
    lines = overlay.law_overlay(ax, ctx, ctx.default)
    train = {line.get_gid(): line for line in lines if line.get_gid().startswith("law-train:")}
    assert train["law-train:a"].get_xdata()[0] == 4096 and train["law-train:a"].get_color() == ctx.colors["a"]
    assert train["law-train:b"].get_xdata()[0] == 2048 and train["law-train:b"].get_color() == ctx.colors["b"]


def test_loss_vs_position_uses_positions_and_overlay(tmp_path):
    run = write_run(tmp_path / "r", curve_rows("b5e5", 5e5, 9000, samples=2),
                    position_rows("b5e5", 5e5, 9000, samples=2))
    loaded = load_runs([run])
    ctx = analysis.analyze(loaded.records, MEASURE, task="perplexity", positions=loaded.positions, n_boot=0,
                           tables=TABLES)
    assert list(ctx.tables["position_curves"]) == ["setting", "pos_start", "pos_end", "x", "nll", "tokens"]
    fig, ax = plt.subplots()
    loss_vs_position(ctx, ax)
    curve = [line for line in ax.get_lines() if line.get_label() == "b5e5"][0]
    assert len(curve.get_xdata()) == 32
    predicted = law.predict(128, 4096, 5e5, 4096, 10000.0).extrapolation_limit
    assert any(line.get_gid() == "law-predicted:b5e5" and line.get_xdata()[0] == pytest.approx(predicted)
               for line in ax.get_lines())
    without = analysis.analyze(loaded.records, MEASURE, task="perplexity", n_boot=0, tables=TABLES)
    with pytest.raises(NoData, match="no positions"):
        loss_vs_position(without, plt.subplots()[1])


# ------------------------------------------------------------------------------------------ whole report


def test_build_report_two_runs_files_and_failed_cells(tmp_path):
    run_a = write_run(tmp_path / "base1e4", curve_rows("tiny:default:10000", 1e4, 4096, samples=2)
                      + [record("tiny:default:10000", 1e4, 32768, 0, None, status="oom")],
                      position_rows("tiny:default:10000", 1e4, 4096, samples=2))
    run_b = write_run(tmp_path / "base1e6", curve_rows("tiny:default:1e+06", 1e6, 9000, samples=2)
                      + curve_rows("tiny:default:300", 300, 1e9, samples=2),
                      position_rows("tiny:default:1e+06", 1e6, 9000, samples=2))
    out = build_report([run_a, run_b], n_boot=100, min_samples=1)
    assert out == run_a / "report"
    for name in ("report.md", "report.html", "summary.csv", "table.csv", "failed.csv",
                 "perplexity_ppl_vs_length.png", "perplexity_loss_vs_position.png",
                 "perplexity_measured_vs_predicted.png",
                 "perplexity_measured_vs_predicted_position_loss.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report-")]

    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["setting"]) == {"tiny:default:10000", "tiny:default:1e+06", "tiny:default:300"}
    for col in ("setting", "model", "task", "measure", "rope_type", "rope_theta", "pretrain_base",
                "train_len", "tune_len", "regime", "predicted_limit", "measured_limit", "measured_ci_low",
                "measured_ci_high",
                "measured_censored", "ratio_measured_to_predicted", "definition", "n_samples", "n_failed"):
        assert col in summary.columns, col
    # one row per (setting, task, definition)
    assert sorted(summary.groupby(["setting", "task"])["measure"].apply(sorted).tolist()) == \
        [["position-loss", "ppl@L"]] * 3
    assert not summary.duplicated(["setting", "task", "measure"]).any()
    by = summary[summary["measure"] == "ppl@L"].set_index("setting")
    assert by.loc["tiny:default:10000", "n_failed"] == 1
    assert by.loc["tiny:default:300", "regime"] == "unbounded"
    assert pd.isna(by.loc["tiny:default:300", "predicted_limit"])
    assert bool(by.loc["tiny:default:300", "measured_censored"]) is True
    assert by.loc["tiny:default:300", "measured_limit"] == 16384
    pos = summary[summary["measure"] == "position-loss"].set_index("setting")
    assert pos.loc["tiny:default:300", "n_samples"] == 0
    assert pd.isna(pos.loc["tiny:default:300", "measured_limit"])
    assert "no positions" in pos.loc["tiny:default:300", "note"]
    assert pos.loc["tiny:default:1e+06", "n_samples"] == 2 and pos.loc["tiny:default:1e+06", "delta"] == 0.5
    assert pos.loc["tiny:default:1e+06", "definition"] == POSITION_LOSS.definition()

    table = pd.read_csv(out / "table.csv")
    assert list(table.columns[:8]) == ["setting", "task", "metric", "length", "mean", "ci_low", "ci_high",
                                       "n"]
    cell = table[(table["setting"] == "tiny:default:10000") & (table["length"] == 8192)].iloc[0]
    assert cell["mean"] == pytest.approx(math.exp(knee_nll(8192, 4096))) and cell["n"] == 2
    oom = table[(table["setting"] == "tiny:default:10000") & (table["length"] == 32768)].iloc[0]
    assert pd.isna(oom["mean"]) and oom["n"] == 0 and oom["n_failed"] == 1

    md = (out / "report.md").read_text()
    assert "## Failed cells" in md and "oom" in md and "CUDA out of memory" in md
    assert "![" in md and "perplexity_ppl_vs_length.png" in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html and 'src="perplexity_' not in html


def test_same_label_in_two_runs_is_kept_apart(tmp_path):
    a = write_run(tmp_path / "a" / "run", curve_rows("tiny", 1e4, 4096, samples=1))
    b = write_run(tmp_path / "b" / "run", curve_rows("tiny", 1e6, 9000, samples=1))
    out = build_report([a, b], tmp_path / "out", n_boot=0, factors=[1.5, 2.0])
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["setting"].unique()) == ["tiny [a/run]", "tiny [b/run]"]
    assert sorted(summary["factor"].unique()) == [1.5, 2.0]
    assert len(summary) == 4


def test_retried_cell_keeps_ok_record(tmp_path):
    rows = curve_rows("s", 1e6, 9000, samples=1)
    rows.insert(0, record("s", 1e6, 16384, 0, None, status="oom"))
    loaded = load_runs([write_run(tmp_path / "r", rows)])
    assert (loaded.records["status"] == "ok").all() and loaded.superseded == 1


def test_bad_input_raises_one_line_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no records") as err:
        build_report([empty])
    assert "\n" not in str(err.value)
    assert not (empty / "report").exists() and list(empty.iterdir()) == []
    with pytest.raises(InputError, match="no such folder"):
        build_report([tmp_path / "missing"])
    good = write_run(tmp_path / "good", curve_rows("s", 1e6, 9000, samples=1))
    with pytest.raises(InputError, match="--factor"):
        build_report([good], factors=[0.5])
    assert not (good / "report").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "records.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(InputError, match="lack"):
        build_report([tmp_path / "junk"])


@pytest.mark.parametrize("out", ["file", "file/sub"])
def test_out_that_cannot_be_a_folder_is_bad_input(out, tmp_path):
    good = write_run(tmp_path / "good", curve_rows("s", 1e6, 9000, samples=1))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        build_report([good], tmp_path / out, n_boot=0)
    assert (tmp_path / "file").read_text() == "x" and not list(tmp_path.glob(".report-*"))


def test_unreadable_record_files_are_no_traceback(tmp_path):
    run = write_run(tmp_path / "r", curve_rows("s", 1e6, 9000, samples=1))
    with open(run / "records.jsonl", "ab") as handle:
        handle.write(b"\xff\xfe not utf-8\n")
    (run / "records.rank1.jsonl").mkdir()  # a folder that matches the glob
    loaded = load_runs([run])
    assert len(loaded.records) == 5 and any("skipped 1 unreadable" in n for n in loaded.notes)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "records.jsonl").write_bytes(b"\x92\xff\n")
    with pytest.raises(InputError, match="no records"):
        load_runs([tmp_path / "bin"])


def test_same_run_folder_twice_is_read_once(tmp_path):
    run = write_run(tmp_path / "r", curve_rows("s", 1e6, 9000, samples=1))
    loaded = load_runs([run, tmp_path / "." / "r", run])
    assert [name for name, _, _ in loaded.runs] == ["r"] and len(loaded.records) == 5
    assert any("given more than once" in note for note in loaded.notes)


def test_cli_command_and_exit_code(tmp_path, capsys):
    import argparse

    from harness.cli import add_report_parser

    run = write_run(tmp_path / "r", curve_rows("s", 1e6, 9000, samples=1))
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(run), "--out", str(tmp_path / "o"), "--bootstrap", "0"])
    assert args.func(args) == 0 and (tmp_path / "o" / "report.md").is_file()
    assert cli_main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_figures_registry_complete():
    assert {"ppl_vs_length", "loss_vs_position", "measured_vs_predicted",
            "measured_vs_predicted_position_loss", "limit_vs_base", "limit_vs_base_position_loss",
            "ppl_sliding_vs_length"} <= set(FIGURES)
    found = registry.task_figures("perplexity")
    assert found.figures == FIGURES and found.tables == TABLES
    assert [m.key for m in found.extra_measures] == ["ppl_sliding@L"]
    assert set(found.columns) == {"sliding_nll"}
    assert registry.task_measures("perplexity") == MEASURES and MEASURES[:2] == [MEASURE, POSITION_LOSS]
    assert [m.key for m in MEASURES[:2]] == ["ppl@L", "position-loss"]
    assert registry.task_figures("no-such-task") == registry.FigureSet()
    assert registry.task_measures("no-such-task") == []


def test_cli_parser_loads_no_analysis():
    # `rope-harness --help` and `report --help` build the report's parser without pandas or matplotlib
    import subprocess
    import sys

    code = ("import argparse, sys; from harness.cli import add_report_parser; "
            "add_report_parser(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('pandas', 'matplotlib', 'harness.report.build') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def longqa_rows(samples: int = 4) -> list[dict]:
    """Synthetic QA records: score and answer log-prob fall past 2K; two datasets."""
    rows = []
    for s in range(samples):
        for length in (512, 1024, 2048, 4096):
            for k, dataset in enumerate(("hotpotqa", "synthetic")):
                rows.append({"task": "longqa", "setting": "s", "model": "tiny", "rope_type": "default",
                             "rope_theta": 1e6, "pretrain_base": 10000.0, "train_len": 1024, "tune_len": 1024,
                             "rotary_dim": 16, "rope_hash": "h", "length": length, "depth": None,
                             "sample": 10 * k + s, "seed": 0, "status": "ok", "error": None,
                             "dataset": dataset,
                             "score": (0.8 if length <= 2048 else 0.1) + 0.05 * s,
                             "answer_logprob": -0.2 * s - length / 1024})
    return rows


def test_figures_draw_the_analysis_of_the_run_settings(tmp_path):
    # what a figure draws (here longqa's figure-only answer log-prob and per-dataset scores) is computed by
    # the analysis step with the run's bootstrap settings: figures never recompute it
    from harness.report.figures import longqa

    found = registry.task_figures("longqa")
    assert found.extra_measures == (longqa.LOGPROB,)
    assert set(found.tables) == {"score_by_dataset", "answer_in_context", "law_vs_base"}
    frame = load_runs([write_run(tmp_path / "qa", longqa_rows())]).records

    def context(n_boot: int, seed: int = 0) -> analysis.FigureContext:
        return analysis.analyze(frame, registry.task_measures("longqa"), task="longqa",
                                extra=found.extra_measures, tables=found.tables, n_boot=n_boot, seed=seed)

    off, on = context(0), context(200)
    assert list(off.analyses) == [longqa.MEASURE.key] and list(off.extras) == [longqa.LOGPROB.key]
    assert off.measure(longqa.LOGPROB.key).table["ci_low"].isna().all()
    assert on.measure(longqa.LOGPROB.key).table["ci_low"].notna().all()
    again = context(200).measure(longqa.LOGPROB.key).table
    pd.testing.assert_frame_equal(on.measure(longqa.LOGPROB.key).table, again)
    assert not context(200, seed=1).measure(longqa.LOGPROB.key).table.equals(again)
    by = on.tables["score_by_dataset"].set_index(["dataset", "length"])
    assert by.loc[("hotpotqa", 512.0), "mean"] == pytest.approx(0.8 + 0.05 * 1.5) and by["n"].eq(4).all()
    fig, ax = plt.subplots()
    longqa.answer_logprob_vs_length(on, ax)
    band = [c for c in ax.collections if len(c.get_paths())]
    assert band, "the CI band of the run's bootstrap"
    fig, ax = plt.subplots()
    longqa.score_by_dataset(on, ax)
    assert len([line for line in ax.get_lines() if len(line.get_xdata()) == 4]) == 2
    out = build_report([tmp_path / "qa"], n_boot=0)
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["measure"]) == [longqa.MEASURE.key]  # figure-only measures stay out of summary.csv


def test_models_of_different_families_get_their_own_sections_and_figures(tmp_path):
    """The zoo and a real model in one report: never one axis (other tokenizers, other training); law inputs'
    sources per setting in summary.csv."""
    zoo = [dict(r, model="zoo:base-1e6", pretrain_base_source="rope_harness_law",
                train_len_source="rope_harness_law", tune_len_source="rope_harness_law")
           for r in curve_rows("b=1e6", 1e6, knee=6000, samples=2)]
    real = [dict(r, model="smollm2", pretrain_base_source="known:SmolLM2-135M",
                 train_len_source="known:SmolLM2-135M", tune_len_source="flag")
            for r in curve_rows("SmolLM2", 1e5, knee=12000, samples=2)]
    out = build_report([write_run(tmp_path / "run", zoo + real)], tmp_path / "report", n_boot=20)
    names = {p.name for p in out.glob("*.png")}
    assert {"perplexity_zoo_ppl_vs_length.png", "perplexity_smollm2_ppl_vs_length.png"} <= names
    assert "perplexity_ppl_vs_length.png" not in names
    page = (out / "report.md").read_text()
    assert "Task: perplexity (zoo)" in page and "Task: perplexity (smollm2)" in page
    summary = pd.read_csv(out / "summary.csv").set_index("setting")
    assert summary.loc["b=1e6", "law_inputs_from"] == "config's rope_harness_law"
    table = "known-checkpoint table (SmolLM2-135M)"
    assert summary.loc["SmolLM2", "law_inputs_from"] == (f"pretrain_base: {table}; train_len: {table}; "
                                                         "tune_len: flag")
    # one family: the file names of every earlier report
    single = build_report([write_run(tmp_path / "zoo", zoo)], tmp_path / "single", n_boot=20)
    assert (single / "perplexity_ppl_vs_length.png").is_file()
    assert "Task: perplexity\n" in (single / "report.md").read_text()


def test_law_inputs_only_assumed_from_the_config_are_flagged():
    rows = pd.DataFrame([{"pretrain_base_source": "rope_theta", "train_len_source": "max_position_embeddings",
                          "tune_len_source": "train_len"}])
    said = analysis.law_inputs_from(rows)
    assert said.count("assumed from the config") == 3 and said.count("check") == 3
    assert analysis.law_inputs_from(pd.DataFrame([{"setting": "old"}])) == ""  # records before sources


def test_too_few_samples_give_no_measured_length_but_a_warning(tmp_path):
    rows = curve_rows("two", 1e6, 6000, samples=2) + curve_rows("three", 1e5, 6000, samples=3)
    summary = pd.read_csv(build_report([write_run(tmp_path / "r", rows)], n_boot=20) / "summary.csv")
    two, three = (summary[summary["setting"] == s].iloc[0] for s in ("two", "three"))
    assert pd.isna(two["measured_limit"]) and pd.isna(two["ratio_measured_to_predicted"])
    assert pd.isna(two["measured_critical_dim"]) and pd.isna(two["measured_censored"])
    assert two["warning"].startswith("insufficient samples: 2 per length, fewer than 3")
    assert three["measured_limit"] == pytest.approx(6000 * 2 ** (LOG15 / 0.6)) and pd.isna(three["warning"])
    # the bar is the user's to set
    again = pd.read_csv(build_report([write_run(tmp_path / "r", rows)], tmp_path / "two", n_boot=20,
                                     min_samples=2) / "summary.csv")
    assert again["measured_limit"].notna().all()
    with pytest.raises(InputError, match="--min-samples 0 must be >= 1"):
        build_report([write_run(tmp_path / "r", rows)], tmp_path / "bad", min_samples=0)


def test_a_perplexity_at_chance_is_never_called_censored(tmp_path):
    """ppl at or above the vocabulary size (a uniform guess) everywhere: the model never worked."""
    rows = [dict(r, chance_nll=math.log(50.0)) for r in curve_rows("noise", 1e6, 1e9, samples=3)]
    rows = [dict(r, nll=math.log(60.0), ppl=60.0) for r in rows]
    summary = pd.read_csv(build_report([write_run(tmp_path / "r", rows)], n_boot=20) / "summary.csv")
    row = summary.iloc[0]
    assert pd.isna(row["measured_limit"]) and pd.isna(row["measured_censored"])
    assert row["warning"].startswith("broken at the reference lengths") and "at chance (50)" in row["warning"]


def test_a_zero_width_ci_is_explained_not_passed_off_as_precision():
    from harness.report.analysis import _row_notes

    agree = _row_notes("", "", False, False, (9159.0, 9159.0), 3)
    assert len(agree) == 1 and "the 3 samples agree" in agree[0]
    assert "not a measurement to one token" in agree[0]
    (bracketed,) = _row_notes("", "", False, False, (2048.0, 2048.0), 3, (1024.0, 4096.0))
    assert bracketed.endswith("the grid puts the crossing between 1K and 4K, interpolated")
    assert _row_notes("", "", False, False, (8597.0, 8636.0), 3) == []
    assert _row_notes("", "", False, False, (math.nan, math.nan), 1) == []


def test_a_setting_is_flagged_as_assuming_finetuning_when_any_of_its_records_is(tmp_path):
    from harness.report.load import load_runs

    rows = curve_rows("b=1e4", 1e4, 4096, 2) + curve_rows("b=1e5", 1e5, 8192, 2)
    for row in rows[:3]:  # a later run of b=1e4 flagged what an older version did not
        row["law_assumes_finetune"] = True
    records = load_runs([write_run(tmp_path / "r", rows)]).records
    flags = records.groupby("setting")["law_assumes_finetune"].agg(set)
    assert flags["b=1e4"] == {True} and flags["b=1e5"] == {False}
