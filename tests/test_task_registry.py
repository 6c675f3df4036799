"""A task is one file: the registry finds it, its options become `run` flags, helper modules are skipped."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

import tasks
from harness.cli import build_parser
from harness.core.errors import InputError
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
    """A second tasks folder: a task module, a task package, a helper module, a helper package and a private
    module that exports TASK (skipped: a leading underscore)."""
    (tmp_path / "echo_task.py").write_text(TASK_FILE)
    (tmp_path / "echo_pkg").mkdir()
    (tmp_path / "echo_pkg" / "__init__.py").write_text(TASK_FILE.replace('"echo_task"', '"echo_pkg"')
                                                       .replace("echo_width", "echo_pkg_width"))
    (tmp_path / "shared_bits.py").write_text("HELPER = 1\n")
    (tmp_path / "helper_pkg").mkdir()
    (tmp_path / "helper_pkg" / "__init__.py").write_text("HELPER = 2\n")
    (tmp_path / "_private.py").write_text(TASK_FILE.replace('"echo_task"', '"_private"')
                                          .replace("echo_width", "private_width"))
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
    yield
    for name in ("echo_task", "echo_pkg", "shared_bits", "helper_pkg", "_private"):
        sys.modules.pop(f"tasks.{name}", None)


def test_a_new_task_file_or_package_is_a_task_and_a_helper_is_not(extra_tasks):
    names = task_names()
    assert {"echo_task", "echo_pkg"} <= set(names)
    assert not {"shared_bits", "helper_pkg", "_private", "base"} & set(names)
    assert get_task("echo_task").measures[0].metric == "width"
    assert get_task("echo_pkg").name == "echo_pkg"


def test_every_module_and_package_of_the_tasks_folder_that_exports_task_is_found():
    """The folder as it is: what exports TASK is a task, under its own name; nothing else is."""
    folder = Path(tasks.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} | {p.parent.name for p in folder.glob("*/__init__.py")}
    exporting = sorted(m for m in modules - {"__init__"}
                       if hasattr(importlib.import_module(f"tasks.{m}"), "TASK"))
    assert exporting and task_names() == exporting
    assert all(get_task(name).name == name for name in exporting)


@pytest.mark.parametrize("name", ["nope", "base", "_private", "shared_bits", "helper_pkg", "tasks.perplexity",
                                  "", "../perplexity"])
def test_an_unknown_task_is_an_input_error_naming_the_known_tasks(name, extra_tasks):
    with pytest.raises(InputError, match=f"unknown task {re.escape(repr(name))}") as raised:
        get_task(name)
    assert all(known in str(raised.value) for known in task_names())


def test_a_task_option_is_a_run_flag_declared_once(extra_tasks):
    args = build_parser().parse_args(["run", "--model", "m", "--task", "echo_task", "--lengths", "8",
                                      "--echo-width", "3", "--depths", "0.5"])
    assert args.echo_width == 3 and args.depths == "0.5"
    flags = [a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
             if "--depths" in a.option_strings]
    assert len(flags) == 1  # shared by passkey and longqa, declared once
