"""The house rules, read from the code's own imports (ast): floors only import downward, no import circles.

Every module of harness/ and tasks/ must be placed on a floor below; a new module that is not fails here,
so its place is a decision, not an accident. Function-level imports count too: they may defer a heavy
dependency, never hide a circle. See docs/design.md (Layout).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# floor -> stage packages (a prefix covers its submodules): one floor per stage, data flowing upward
FLOORS = {
    0: ["harness", "harness.core", "harness.law"],  # errors, values, metric definitions, the contract; laws
    1: ["harness.data"],  # hub access, JSON lines, corpora
    2: ["harness.model"],  # checkpoints: RoPE overrides, GGUF, describe / load / verify, the zoo
    3: ["tasks"],  # tasks speak to the engine contract only: they cannot import an engine
    4: ["harness.engine"],  # the in-process engine
    5: ["harness.serving"],  # the served engine
    6: ["harness.factory"],  # opens either engine: the one place that knows both
    7: ["harness.run"],  # suites, the run plan, the dry run, the runner, the run folder
    8: ["harness.report"],
    9: ["harness.cli"],
}
STAGES = [prefix for prefixes in FLOORS.values() for prefix in prefixes]


def floor_of(module: str) -> int | None:
    best, floor = -1, None
    for level, prefixes in FLOORS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), level
    return floor


def project_modules() -> dict[str, Path]:
    out = {}
    for top in ("harness", "tasks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `module` imports anywhere in its body (from-imports of names resolve to the module)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = None


def graph() -> dict[str, set[str]]:
    global GRAPH
    if GRAPH is None:
        modules = project_modules()
        GRAPH = {m: imports_of(m, p, set(modules)) for m, p in modules.items()}
    return GRAPH


def test_every_module_has_a_floor():
    assert [m for m in graph() if floor_of(m) is None] == []


def test_no_import_runs_up_a_floor():
    upward = [f"{a} (floor {floor_of(a)}) -> {b} (floor {floor_of(b)})" for a, targets in graph().items()
              for b in targets if floor_of(b) > floor_of(a)]
    assert upward == []


def test_no_import_circles():
    g = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack
                               else f"{node}->{nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [])
    assert circles == []


MAX_DEPTH = 10  # levels of the import graph (docs/design.md, Layout)


def unit_of(module: str) -> str:
    """A module's unit in the depth count: the report wing, tasks and the CLI each count as one."""
    for package in ("harness.report", "tasks", "harness.cli"):
        if module == package or module.startswith(package + "."):
            return package
    return module


def levels() -> dict[str, int]:
    """Each unit's level: one above the highest unit it imports (a unit importing nothing is level 1)."""
    units: dict[str, set[str]] = {}
    for module, targets in graph().items():
        units.setdefault(unit_of(module), set()).update(unit_of(t) for t in targets)
    for unit, targets in units.items():
        targets.discard(unit)
    found: dict[str, int] = {}

    def level(unit: str) -> int:
        if unit not in found:
            found[unit] = 1 + max((level(t) for t in units[unit]), default=0)
        return found[unit]

    for unit in units:
        level(unit)
    return found


def test_import_graph_is_at_most_max_depth_levels_deep():
    deepest = max(levels().items(), key=lambda item: item[1])
    assert deepest[1] <= MAX_DEPTH, f"{deepest[0]} is {deepest[1]} levels deep (at most {MAX_DEPTH})"


def test_the_depth_count_sees_a_chain():
    """The level rule itself: a module importing one that imports another is three levels deep."""
    assert levels()["harness.core.errors"] == 1
    assert levels()["harness.cli"] > levels()["harness.run.runner"] > levels()["harness.run.run_plan"]


def test_only_the_cli_imports_the_report_wing():
    report = floor_of("harness.report")
    users = {a for a, targets in graph().items() for b in targets if floor_of(b) == report != floor_of(a)}
    assert {u.partition(".cli")[0] + ".cli" if ".cli" in u else u for u in users} <= {"harness.cli"}


def test_the_run_wing_names_no_serving_module():
    """In-process and served engines are peers behind harness.factory: the run wing sees neither."""
    named = {f"{a} -> {b}" for a, targets in graph().items() if a.startswith("harness.run")
             for b in targets if b.startswith(("harness.serving", "harness.engine.engine"))}
    assert named == set()


def test_every_module_lives_in_a_stage_package():
    """harness/ holds stage packages only: no flat module beside them."""
    loose = [m for m in graph() if m.startswith("harness.") and m.count(".") == 1
             and not (ROOT / m.replace(".", "/")).is_dir() and m not in STAGES]
    assert loose == []


MAX_FUNCTION_LINES = 80  # a function reads on one screen
MAX_FILE_LINES = 450  # a module reads in one sitting


def test_no_function_is_longer_than_a_screen():
    long = {f"{m}.{node.name}": n for m, p in project_modules().items()
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES}
    assert long == {}


def test_no_source_file_is_too_long():
    long = {m: n for m, p in project_modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


@pytest.mark.parametrize("argv", [["--help"],
                                  ["law", "--head-dim", "128", "--train-len", "4096", "--base", "1e6",
                                   "--json"]])
def test_help_and_law_load_no_heavy_library(argv):
    code = ("import sys, contextlib, io\nfrom harness.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()):\n    main({argv!r})\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'pandas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_tasks_call_only_the_contracts_verbs_and_every_engine_answers_them():
    """The request/response seam: every engine verb a task calls is declared by the contract
    (harness/core/contract.py) and implemented by both engines, in-process and served."""
    import re

    from harness.core.contract import Engine as Contract
    from harness.engine.engine import Engine
    from harness.serving.backend import ServedEngine

    called = {m for path in (ROOT / "tasks").rglob("*.py")
              for m in re.findall(r"\bengine\.([a-z_]+)\b", path.read_text())}
    attributes = set(Contract.__annotations__)  # dtype, length_dependent: set by each engine's __init__
    verbs = {name for name in dir(Contract) if not name.startswith("_")} | attributes
    assert called and called <= verbs, called - verbs
    for engine in (Engine, ServedEngine):
        assert all(callable(getattr(engine, verb, None)) for verb in called - attributes), engine
