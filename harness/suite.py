"""Suites: models x RoPE settings x tasks from a TOML file (or from `run` flags), validated up front.

A suite file has an optional [run] table, one or more [[settings]] and one or more [[tasks]]:

    [run]                      # all optional; CLI flags override
    out = "results/my-sweep"   # relative to the current directory
    dtype = "bfloat16"         # also device, attn, chunk_size, max_memory, report
    [[settings]]
    model = "meta-llama/Llama-2-7b-hf"   # or a local folder, or zoo:NAME
    label = "llama2-base-1e6"
    rope_theta = 1e6                     # also rope_type, rope_factor, rope_params = {...}
    tune_len = 4096                      # law inputs: pretrain_base, train_len, tune_len
    [[tasks]]
    name = "perplexity"
    lengths = [4096, 8192, 16384]
    samples = 8                          # also seed, corpus, bos, task options (depths, ...), and
                                         # settings = ["label", ...] to run this task on some settings only

Unknown keys are errors naming the key and its line, so a typo never silently runs the wrong grid.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from harness import models
from harness.errors import InputError
from harness.runner import RunOptions, Setting, TaskSpec
from tasks.base import TaskParams, get_task

RUN_KEYS = {"out", "dtype", "device", "attn", "chunk_size", "max_memory", "report"}
SETTING_KEYS = {"model", "label", "rope_theta", "rope_type", "rope_factor", "rope_params", "pretrain_base", "train_len",
                "tune_len", "dtype", "device", "attn", "revision", "trust_remote_code"}
TASK_KEYS = {"name", "lengths", "samples", "seed", "corpus", "bos", "settings"}
SHARED_OPTIONS = {"depths", "max_new_tokens", "chat_template"}
DEFAULT_SAMPLES = 4


@dataclass
class Suite:
    settings: list[Setting]
    tasks: list[TaskSpec]
    options: RunOptions
    report: bool = True


def packaged_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("harness.suites").iterdir() if p.name.endswith(".toml"))


def _line_of(text: str, key: str) -> int | None:
    """Line of `key = ...` (or, failing that, of a `[key]` table header): error messages name it."""
    for pattern in (rf"\s*{re.escape(key)}\s*=", rf"\s*\[+\s*{re.escape(key)}\s*\]+"):
        for number, line in enumerate(text.splitlines(), 1):
            if re.match(pattern, line):
                return number
    return None


def _check_keys(table: dict[str, Any], allowed: set[str], where: str, source: str, text: str) -> None:
    for key in table:
        if key not in allowed:
            line = _line_of(text, key)
            at = f"{source}:{line}" if line else source
            raise InputError(f"{at}: unknown key {key!r} in {where}: use one of {', '.join(sorted(allowed))}")


def _read(name_or_path: str) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise InputError(f"suite file {name_or_path!r} does not exist: pass a TOML file or one of {', '.join(packaged_suites())}")
        return str(path), path.read_text()
    if name_or_path not in packaged_suites():
        raise InputError(f"unknown suite {name_or_path!r}: pass a TOML file or one of {', '.join(packaged_suites())}")
    return f"suite:{name_or_path}", resources.files("harness.suites").joinpath(f"{name_or_path}.toml").read_text()


def _typed(value: Any, kind: type, key: str, source: str, text: str) -> Any:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        line = _line_of(text, key)
        raise InputError(f"{source}:{line or '?'}: {key} must be {kind.__name__}, got {value!r}")
    return value


def parse_suite(text: str, source: str) -> tuple[dict[str, Any], list[Setting], list[TaskSpec]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: invalid TOML ({exc}): fix the syntax") from None
    _check_keys(data, {"run", "settings", "tasks"}, "the top level", source, text)
    run = data.get("run", {})
    _check_keys(run, RUN_KEYS, "[run]", source, text)
    if not data.get("settings"):
        raise InputError(f"{source}: no [[settings]]: add at least one with model = \"...\"")
    if not data.get("tasks"):
        raise InputError(f"{source}: no [[tasks]]: add at least one with name and lengths")
    settings = []
    for entry in data["settings"]:
        _check_keys(entry, SETTING_KEYS, "[[settings]]", source, text)
        if "model" not in entry:
            raise InputError(f"{source}: a [[settings]] entry has no model: add model = \"PATH_OR_ID\"")
        num = {k: _typed(entry[k], float, k, source, text) for k in ("rope_theta", "rope_factor", "pretrain_base") if k in entry}
        ints = {k: _typed(entry[k], int, k, source, text) for k in ("train_len", "tune_len") if k in entry}
        override = models.RopeOverride(theta=num.get("rope_theta"), rope_type=entry.get("rope_type"),
                                       factor=num.get("rope_factor"), params=dict(entry.get("rope_params", {})),
                                       pretrain_base=num.get("pretrain_base"), train_len=ints.get("train_len"),
                                       tune_len=ints.get("tune_len"))
        settings.append(Setting(entry["model"], override, entry.get("label"), entry.get("dtype", run.get("dtype")),
                                entry.get("device", run.get("device")), entry.get("attn", run.get("attn")),
                                entry.get("revision"), bool(entry.get("trust_remote_code", False))))
    tasks = []
    for entry in data["tasks"]:
        name = entry.get("name")
        if not name:
            raise InputError(f"{source}: a [[tasks]] entry has no name: add name = \"perplexity\" (or passkey, longqa)")
        task = get_task(name)
        option_names = set(task.option_names())
        _check_keys(entry, TASK_KEYS | option_names, f"[[tasks]] {name}", source, text)
        if "lengths" not in entry:
            raise InputError(f"{source}: task {name} has no lengths: add lengths = [1024, 2048, 4096]")
        lengths = [_typed(x, int, "lengths", source, text) for x in entry["lengths"]]
        params = TaskParams(lengths=sorted(set(lengths)), samples=int(entry.get("samples", DEFAULT_SAMPLES)),
                            seed=int(entry.get("seed", 0)), corpus=str(entry.get("corpus", "stdlib")),
                            bos=bool(entry.get("bos", True)),
                            options={k: entry.get(k) for k in option_names})
        only = entry.get("settings")
        labels = {s.label for s in settings}
        if only is not None and (not isinstance(only, list) or not set(only) <= labels):
            line = _line_of(text, "settings")
            raise InputError(f"{source}:{line or '?'}: task {name} settings must list labels of [[settings]] "
                             f"entries ({', '.join(sorted(str(x) for x in labels))})")
        tasks.append(TaskSpec(name, params, only))
    return run, settings, tasks


def _run_options(run: dict[str, Any], args: argparse.Namespace, default_out: Path, suite: str | None) -> RunOptions:
    from harness.cli import parse_size

    out = Path(args.out) if getattr(args, "out", None) else Path(run.get("out", default_out))
    chunk = args.chunk_size if getattr(args, "chunk_size", None) is not None else run.get("chunk_size")
    memory = getattr(args, "max_memory", None) or run.get("max_memory")
    if chunk is not None and chunk < 1:
        raise InputError(f"--chunk-size must be a positive number of tokens (got {chunk})")
    return RunOptions(out=out, chunk_size=chunk, max_memory=parse_size(str(memory)) if memory else None,
                      dry_run=bool(getattr(args, "dry_run", False)), progress=not getattr(args, "no_progress", False),
                      command=list(getattr(args, "argv", [])), suite=suite)


def load_suite(name_or_path: str, args: argparse.Namespace) -> Suite:
    """A packaged or file suite; `--out`, `--chunk-size`, `--max-memory`, `--dtype`, `--device` override it."""
    source, text = _read(name_or_path)
    run, settings, tasks = parse_suite(text, source)
    for setting in settings:
        setting.dtype = getattr(args, "dtype", None) or setting.dtype
        setting.device = getattr(args, "device", None) or setting.device
    options = _run_options(run, args, Path("results") / Path(name_or_path).stem, source)
    return Suite(settings, tasks, options, bool(run.get("report", True)))


def task_options(args: argparse.Namespace, name: str) -> dict[str, Any]:
    from harness.cli import parse_floats

    options = {}
    for key in get_task(name).option_names():
        value = getattr(args, key, None)
        if key == "depths" and isinstance(value, str):
            value = parse_floats(value, "--depths")
        if key == "chat_template" and value is False:
            value = None
        options[key] = value
    return options


def from_flags(args: argparse.Namespace) -> Suite:
    """One setting and one task from `rope-harness run --model ... --task ... --lengths ...`."""
    from harness.cli import parse_lengths, parse_param

    if not args.lengths:
        raise InputError("--lengths is required with --model: e.g. --lengths 1024,2048,4096")
    override = models.RopeOverride(theta=args.rope_theta, rope_type=args.rope_type, factor=args.rope_factor,
                                   params=dict(parse_param(p) for p in args.rope_param),
                                   pretrain_base=args.pretrain_base, train_len=args.train_len, tune_len=args.tune_len)
    setting = Setting(args.model, override, args.label, args.dtype, args.device, args.attn, args.revision,
                      args.trust_remote_code)
    params = TaskParams(lengths=parse_lengths(args.lengths), samples=args.samples or DEFAULT_SAMPLES, seed=args.seed,
                        corpus=args.corpus or "stdlib", bos=not args.no_bos, options=task_options(args, args.task))
    label = args.label or f"{Path(args.model.replace('zoo:', '')).name}-{args.task}"
    default_out = Path("results") / re.sub(r"[^A-Za-z0-9._-]+", "_", label)
    return Suite([setting], [TaskSpec(args.task, params)], _run_options({}, args, default_out, None), report=False)
