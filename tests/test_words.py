"""What the user reads: every rope-harness environment variable is documented, install lines name what a clone
can install, and a rerun is advised only where a rerun can heal a cell."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from harness.cli import _print_table
from harness.run.runner import RunResult, refusal_advice

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_environment_variable_the_code_reads_is_documented():
    code = "\n".join(p.read_text() for p in (ROOT / "harness").rglob("*.py"))
    ours = set(re.findall(r"environ(?:\.get)?[\[(]\"(ROPE_HARNESS_\w+)\"", code))
    assert ours  # the cache root at least
    usage = (ROOT / "docs" / "usage.md").read_text()
    assert {name for name in ours if f"`{name}`" not in usage} == set()


def test_no_install_line_names_a_registry_package_that_does_not_exist():
    """rope-harness is installed from its clone: `pip install 'rope-harness[serve]'` would fail."""
    said = {p.name: re.findall(r"pip install[^\n`]*rope-harness\[", p.read_text()) for p in DOCS}
    assert {name: found for name, found in said.items() if found} == {}


def failed(error: str, retry: bool, status: str = "error") -> dict:
    return {"setting": "s", "task": "passkey", "length": 1024, "status": status, "error": error,
            "retry": retry}


def test_a_rerun_is_advised_only_where_it_can_heal_a_cell(capsys):
    probe = failed("llama.cpp does not serve the asked setting: probe at 1024 tokens: override NOT applied",
                   retry=False)
    advice = refusal_advice([probe])
    assert advice.startswith("1 cell(s) fail again on a rerun (llama.cpp does not serve") and "fix" in advice
    table = [{"setting": "s", "task": "passkey", "length": 1024, "ok": 0, "failed": 1, "metric": "accuracy",
              "value": None}]
    _print_table(RunResult(Counter(error=1), 1, 1, table, advice=advice, retryable=0), full=False)
    out = capsys.readouterr().out
    assert "rerun the same command" not in out and "fail again on a rerun" in out
    _print_table(RunResult(Counter(error=1), 1, 1, table, advice="", retryable=1), full=False)
    assert "rerun the same command to retry the failed cells" in capsys.readouterr().out
    refused = failed("planner: 9 GiB needed at L=8192 exceeds the memory budget 1 GiB (--max-memory)", False,
                     "oom")
    assert "a rerun refuses them again" in refusal_advice([refused]) and refusal_advice([]) == ""
