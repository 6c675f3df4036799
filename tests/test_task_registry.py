"""A task is one file: the registry finds it, its options become `run` flags, helper modules are skipped."""

from __future__ import annotations

import sys

import pytest

import tasks
from harness.cli import build_parser
from tasks.base import get_task, task_names

TASK_FILE = '''
from harness.core.metrics import MeasureSpec
from tasks.base import Cell, Option, Task


class Echo(Task):
    name = "echo_task"
    options = (Option("echo_width", "echo_task: width", type=int),)
    measures = (MeasureSpec(metric="width", name="width"),)

    def cells(self, params):
        return [Cell(n, None, 0) for n in params.lengths]


TASK = Echo()
'''


@pytest.fixture
def extra_tasks(tmp_path, monkeypatch):
    (tmp_path / "echo_task.py").write_text(TASK_FILE)
    (tmp_path / "shared_bits.py").write_text("HELPER = 1\n")
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
    yield
    for name in ("tasks.echo_task", "tasks.shared_bits"):
        sys.modules.pop(name, None)


def test_a_new_task_file_is_a_task_and_a_helper_module_is_not(extra_tasks):
    names = task_names()
    assert "echo_task" in names and "shared_bits" not in names
    assert {"perplexity", "passkey", "longqa"} <= set(names)
    assert get_task("echo_task").measures[0].metric == "width"


def test_a_task_option_is_a_run_flag_declared_once(extra_tasks):
    args = build_parser().parse_args(["run", "--model", "m", "--task", "echo_task", "--lengths", "8",
                                      "--echo-width", "3", "--depths", "0.5"])
    assert args.echo_width == 3 and args.depths == "0.5"
    flags = [a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
             if "--depths" in a.option_strings]
    assert len(flags) == 1  # shared by passkey and longqa, declared once
