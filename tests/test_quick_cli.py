"""The default job's grid (what the README promises) and the installed console script."""

import json
import shutil
import subprocess

from harness import suite
from harness.cli import main
from harness.zoo_models import zoo_names

QUICK_LENGTHS = [128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192]


def quick_suite():
    return suite.load_suite("quick", suite.Flags(dry_run=True, no_progress=True))


def grid_size(quick) -> int:
    from tasks.base import get_task

    return sum(len(get_task(t.name).cells(t.params)) * sum(t.applies_to(s.label) for s in quick.settings)
               for t in quick.tasks)


def test_quick_suite_grid_is_what_the_readme_promises():
    quick = quick_suite()
    assert [s.model for s in quick.settings] == [f"zoo:{n}" for n in zoo_names()]
    assert str(quick.options.out) == "results/quick" and quick.report
    ppl = next(t for t in quick.tasks if t.name == "perplexity")
    assert ppl.params.lengths == QUICK_LENGTHS and ppl.params.samples == 12 and ppl.params.corpus == "stdlib"
    assert grid_size(quick) - 8 * 13 * 12 == 60  # the perplexity grid + 60 passkey cells
    passkey = next(t for t in quick.tasks if t.name == "passkey")
    assert passkey.params.options["depths"] == [0.2, 0.5, 0.8] and len(passkey.settings) == 4


def test_default_job_dry_run_loads_no_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{grid_size(quick_suite())} cells (0 already recorded" in out and "b=1e6 tuned@1024" in out
    assert not (tmp_path / "results").exists()


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
