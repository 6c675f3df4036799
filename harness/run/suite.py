"""Suites: models x RoPE settings x tasks from a TOML file (or from `run` flags), validated up front.

A suite file has an optional [run] table, one or more [[settings]] and one or more [[tasks]]:

    [run]                      # all optional; CLI flags override
    out = "results/my-sweep"   # relative to the current directory
    dtype = "bfloat16"         # also device, attn, chunk_size, strategy, max_memory, report
    [[settings]]
    model = "meta-llama/Llama-2-7b-hf"   # or a local folder, or zoo:NAME
    label = "llama2-base-1e6"
    rope_theta = 1e6                     # also rope_type, rope_factor, rope_params = {...}
    tune_len = 4096                      # law inputs: pretrain_base, train_len, tune_len
    [[tasks]]
    name = "perplexity"
    lengths = [4096, 8192, 16384]       # or ["4k", "8k", "16k"] (k = 1024)
    samples = 8                          # also seed, corpus, bos, task options (depths, ...), and
                                         # settings = ["label", ...] to run this task on some settings only

Unknown keys are errors naming the key and its line, so a typo never silently runs the wrong grid.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from harness.core.errors import InputError, one_line, writable_folder
from harness.core.options import Option
from harness.core.values import (
    batch_arg,
    batch_value,
    finite_float,
    length_arg,
    length_value,
    parse_lengths,
    parse_param,
    parse_size,
    safe_name,
)
from harness.engine import STRATEGIES
from harness.model.rope_config import RopeOverride
from tasks.base import TaskParams, get_task

LENGTH, SIZE, BATCH = "a length", "a size", "a batch size"  # suite kinds beyond TOML's own types
DEFAULT_SAMPLES = 4
# A setting's options (one [[settings]] entry, or the run flags with --model); dtype, device and attn may also
# be set for every setting in [run]
SETTING_OPTIONS = (
    Option("model", "local folder, hub id, zoo:NAME, a GGUF file, or a packaged model (smollm2)"),
    Option("label", "setting label (default <model name>:<rope_type>:<theta>[:f<factor>])"),
    Option("rope_theta", "RoPE base to evaluate with", finite_float, kind=float),
    Option("rope_type", "default, linear, ntk, dynamic, yarn, llama3, longrope"),
    Option("rope_factor", "scaling factor for linear/ntk/dynamic/yarn/llama3", finite_float, kind=float),
    Option("rope_params", "extra RoPE parameter (repeatable; JSON values)", cli="--rope-param",
           metavar="KEY=VALUE", parse=parse_param, kind=dict, repeat=True),
    Option("pretrain_base", "law input: the pre-training base b0", finite_float, kind=float),
    Option("train_len", "law input: pre-training length (e.g. 4096 or 4k)", length_arg, kind=LENGTH),
    Option("tune_len", "law input: fine-tuning length (e.g. 4096 or 4k)", length_arg, kind=LENGTH),
    Option("dtype", "float32, bfloat16, float16 or auto (float32 on CPU, bfloat16 on GPU)"),
    Option("device", "cpu, cuda, cuda:N, or auto (device_map=auto across GPUs)"),
    Option("attn", "attention implementation", choices=("sdpa", "flash_attention_2", "eager")),
    Option("revision", "hub revision"),
    Option("trust_remote_code", "allow custom model code", bool, default=False),
    Option("serve", "launch this inference engine (vllm, sglang or llama.cpp) with the RoPE setting applied "
           "and score through it"),
    Option("engine_python", "with --serve: the python that runs the engine, e.g. a venv of its own (default: "
           "this one)", metavar="PATH"),
    Option("server_url", "a running OpenAI-compatible server of this setting (repeat to share the cells)",
           metavar="URL", kind=list, repeat=True),
    Option("tensor_parallel", "with --serve: GPUs per engine", int, default=1),
    Option("data_parallel", "with --serve: engine replicas", int, default=1),
    Option("probe", "served: skip the probe that checks the server against the in-process model", bool,
           cli="--no-probe", default=True),
)
SHARED = ("dtype", "device", "attn")  # setting options [run] may set for every setting, flags for a suite's
RUN_OPTIONS = (
    Option("out", "run folder (default: results/<label> with --label, else results/<model name>-<tasks>; "
           "for a suite its [run] out, else results/<suite>)"),
    Option("chunk_size", "force chunked prefill with this many tokens per chunk (with --strategy stream: the "
           "query chunk)", length_arg, kind=int),
    Option("strategy", "how a sequence is scored: auto (default: single pass if it fits the budget, else "
           "layer-streamed, else chunked prefill) or one forced (recorded in each record's plan)",
           choices=STRATEGIES, default="auto"),
    Option("batch_size", "same-length sequences scored in one forward where a single pass plans (default 1; "
           "auto: the most that fit the budget, up to 64 rows and 64K tokens a forward on a GPU, 2K on CPU); "
           "the numbers equal batch 1's", batch_arg, metavar="N|auto", kind=BATCH, default=1),
    Option("max_memory", "memory budget, e.g. 8GiB (default: 80%% of the memory available at start on CPU, "
           "90%% of the card on CUDA): cells the planner says exceed it are recorded as oom", kind=SIZE),
    Option("report", "do not render <out>/report after the run", bool, cli="--no-report", default=True),
)
# A task block's parameters shared by every task (the task's own options come from the task)
TASK_OPTIONS = (
    Option("lengths", "comma list of context lengths; k = 1024: e.g. 1024,2048,4096 or 1k,2k,4k",
           parse=parse_lengths, kind=list),
    Option("samples", f"samples per length (default {DEFAULT_SAMPLES})", int, default=DEFAULT_SAMPLES),
    Option("seed", "seed of the tasks' random choices (default 0)", int, default=0),
    Option("corpus", "text file, folder, .jsonl[:FIELD], stdlib, book, or hf:NAME[:CONFIG][:SPLIT][:FIELD] "
           "(default stdlib: the held-out Python standard library)", default="stdlib"),
    Option("bos", "do not prepend BOS", bool, cli="--no-bos", default=True),
)
SETTING_KEYS = {o.name for o in SETTING_OPTIONS}
RUN_KEYS = {o.name for o in RUN_OPTIONS} | set(SHARED)
TASK_KEYS = {"name", "settings"} | {o.name for o in TASK_OPTIONS}
_MISSING = object()


@dataclass(frozen=True)
class Setting:
    """One model + RoPE override, evaluated as one curve."""

    model: str
    override: RopeOverride = field(default_factory=RopeOverride)
    label: str | None = None
    dtype: str | None = None
    device: str | None = None
    attn: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    serve: str | None = None  # an inference engine to launch with the override applied (harness.serving)
    engine_python: str | None = None  # the interpreter that runs it (its own environment); None: this one
    server_urls: list[str] = field(default_factory=list)  # running OpenAI-compatible servers of this setting
    tensor_parallel: int = 1
    data_parallel: int = 1
    probe: bool = True  # served: check a probe's log-probs against the in-process model (serving.probe)

    @property
    def served(self) -> bool:
        return self.serve is not None or bool(self.server_urls)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    params: TaskParams
    settings: list[str] | None = None  # labels this task runs on (None: every setting)

    def applies_to(self, label: str) -> bool:
        return self.settings is None or label in self.settings


@dataclass
class RunOptions:
    out: Path
    chunk_size: int | None = None
    strategy: str = "auto"  # auto | single | stream | prefill (harness.engine.planner)
    batch_size: int | str = 1  # rows per single-pass forward, or "auto" (harness.engine.planner.batch_rows)
    max_memory: int | None = None
    dry_run: bool = False
    progress: bool = True
    command: list[str] = field(default_factory=list)
    suite: str | None = None
    verbose: bool = False  # dry run: every cell's line
    report: bool = True  # render <out>/report after the run


@dataclass
class Flags:
    """`rope-harness run` flags as typed values (the CLI builds this; nothing below it sees argparse): the
    options given, by name (None: not given)."""

    suite: str | None = None
    task: str = "perplexity"  # a comma list: --tasks perplexity,passkey (--task is the same flag)
    setting: dict[str, Any] = field(default_factory=dict)  # SETTING_OPTIONS
    run: dict[str, Any] = field(default_factory=dict)  # RUN_OPTIONS
    params: dict[str, Any] = field(default_factory=dict)  # TASK_OPTIONS
    task_options: dict[str, Any] = field(default_factory=dict)  # every task's own options
    dry_run: bool = False
    no_progress: bool = False
    verbose: bool = False
    argv: list[str] = field(default_factory=list)


@dataclass
class Suite:
    settings: list[Setting]
    tasks: list[TaskSpec]
    options: RunOptions


def packaged_suites() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("harness.run.suites").iterdir()
                  if p.name.endswith(".toml"))


def _line_of(text: str, key: str, value: Any = _MISSING) -> int | None:
    """Line of `key = ...` (or, failing that, of a `[key]` table header): error messages name it. Given the
    bad `value`, the line that holds it, so that a bad key in a third [[settings]] is not blamed on the
    first."""
    lines = text.splitlines()
    assigned = [n for n, line in enumerate(lines, 1) if re.match(rf"\s*{re.escape(key)}\s*=", line)]
    for number in assigned if value is not _MISSING else []:
        try:
            if repr(tomllib.loads(lines[number - 1]).get(key)) == repr(value):
                return number
        except tomllib.TOMLDecodeError:  # a value spread over several lines
            continue
    if assigned:
        return assigned[0]
    for number, line in enumerate(lines, 1):
        if re.match(rf"\s*\[+\s*{re.escape(key)}\s*\]+", line):
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
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise InputError(f"suite file {name_or_path!r} {what}: pass a TOML file or one of "
                             f"{', '.join(packaged_suites())}")
        try:
            return str(path), path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read suite file {name_or_path!r} ({one_line(exc)}): "
                             "pass a UTF-8 TOML file") from None
    if name_or_path not in packaged_suites():
        raise InputError(f"unknown suite {name_or_path!r}: pass a TOML file or one of "
                         f"{', '.join(packaged_suites())}")
    return (f"suite:{name_or_path}",
            resources.files("harness.run.suites").joinpath(f"{name_or_path}.toml").read_text())


def _typed(value: Any, kind: type, key: str, source: str, text: str, whole: Any = _MISSING) -> Any:
    """`value` as `kind` (an int is a float; inf and nan are not), else an InputError naming key and line;
    `whole` is the key's whole value when `value` is one item of it (a list's element)."""
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and ok and not math.isfinite(value):
        ok, kind_name = False, "a finite number"
    else:
        kind_name = {dict: "a table", list: "a list"}.get(kind, kind.__name__)
    if not ok:
        line = _line_of(text, key, value if whole is _MISSING else whole)
        raise InputError(f"{source}:{line or '?'}: {key} must be {kind_name}, got {value!r}")
    return value


def _length(value: Any, key: str, source: str, text: str, whole: Any = _MISSING) -> int:
    """A token count: an integer or a string such as "4k" (k = 1024)."""
    number = length_value(value) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if number is None:
        line = _line_of(text, key, value if whole is _MISSING else whole)
        raise InputError(f"{source}:{line or '?'}: {key} must be an integer or a length such as \"4k\" "
                         f"(k = 1024), got {value!r}")
    return number


def _values(table: dict[str, Any], options: tuple[Option, ...], source: str, text: str) -> dict[str, Any]:
    """Each declared option's value in `table` (a suite's [run], [[settings]] or [[tasks]] entry), checked
    against the option's kind and choices (TOML would otherwise hand a string to code that expects a number,
    or make bool("false") true); a key left out is absent."""
    values = {}
    for option in options:
        if option.name not in table:
            continue
        key, value, kind = option.name, table[option.name], option.suite_kind
        if kind == LENGTH:
            value = _length(value, key, source, text)
        elif kind == SIZE and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise InputError(f"{source}:{_line_of(text, key) or '?'}: {key} must be a size such as \"8GiB\" "
                             f"or a number of bytes, got {value!r}")
        elif kind == BATCH and batch_value(value) is None:
            raise InputError(f"{source}:{_line_of(text, key) or '?'}: {key} {value!r} is not a batch size: "
                             "use a whole number >= 1 or \"auto\"")
        elif kind in (str, int, float, bool, list, dict):
            value = _typed(value, kind, key, source, text)
        if option.choices and value not in option.choices:
            raise InputError(f"{source}:{_line_of(text, key, value) or '?'}: {key} {value!r} is unknown: use "
                             f"{', '.join(option.choices)}")
        values[key] = value
    return values


def setting_from(values: dict[str, Any]) -> Setting:
    """The one constructor of a Setting from its options' values (a suite entry, or the run flags); an option
    left out takes its declared default."""
    given = {o.name: values.get(o.name, o.default) for o in SETTING_OPTIONS}
    override = RopeOverride(theta=given.pop("rope_theta"), rope_type=given.pop("rope_type"),
                            factor=given.pop("rope_factor"), params=dict(given.pop("rope_params") or {}),
                            pretrain_base=given.pop("pretrain_base"), train_len=given.pop("train_len"),
                            tune_len=given.pop("tune_len"))
    return Setting(override=override, server_urls=list(given.pop("server_url") or []), **given)


def params_from(values: dict[str, Any], options: dict[str, Any]) -> TaskParams:
    """A task block's parameters from its options' values; one left out takes its declared default."""
    given = {o.name: values.get(o.name, o.default) for o in TASK_OPTIONS}
    return TaskParams(lengths=sorted(set(given.pop("lengths"))), options=options, **given)


def _tables(data: dict[str, Any], key: str, source: str, text: str) -> list[dict[str, Any]]:
    """The [[key]] entries; `[key]` (one table) or `key = ...` would otherwise be iterated key by key."""
    entries = data.get(key)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        line = _line_of(text, key)
        raise InputError(f"{source}:{line or '?'}: {key} must be an array of tables: write each entry under "
                         f"[[{key}]] (double brackets)")
    return entries


def parse_suite(text: str, source: str) -> tuple[dict[str, Any], list[Setting], list[TaskSpec]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: invalid TOML ({exc}): fix the syntax") from None
    _check_keys(data, {"run", "settings", "tasks"}, "the top level", source, text)
    run = data.get("run", {})
    _typed(run, dict, "run", source, text)
    _check_keys(run, RUN_KEYS, "[run]", source, text)
    run = _values(run, RUN_OPTIONS + tuple(o for o in SETTING_OPTIONS if o.name in SHARED), source, text)
    if not data.get("settings"):
        raise InputError(f"{source}: no [[settings]]: add at least one with model = \"...\"")
    if not data.get("tasks"):
        raise InputError(f"{source}: no [[tasks]]: add at least one with name and lengths")
    settings = []
    for entry in _tables(data, "settings", source, text):
        _check_keys(entry, SETTING_KEYS, "[[settings]]", source, text)
        if "model" not in entry:
            raise InputError(f"{source}: a [[settings]] entry has no model: add model = \"PATH_OR_ID\"")
        defaults = {k: run[k] for k in SHARED if k in run}  # [run] dtype/device/attn: every setting's default
        settings.append(setting_from({**defaults, **_values(entry, SETTING_OPTIONS, source, text)}))
    labels = [s.label for s in settings if s.label is not None]
    for label in labels:
        if labels.count(label) > 1:  # one label is one curve, and tasks pick settings by label
            line = _line_of(text, "label", label)
            raise InputError(f"{source}:{line or '?'}: label {label!r} is given to several [[settings]]: "
                             "give each its own label")
    tasks = []
    for entry in _tables(data, "tasks", source, text):
        name = entry.get("name")
        if not name:
            raise InputError(f"{source}: a [[tasks]] entry has no name: "
                             "add name = \"perplexity\" (or passkey, longqa)")
        _typed(name, str, "name", source, text)
        task = get_task(name)
        option_names = set(task.option_names())
        _check_keys(entry, TASK_KEYS | option_names, f"[[tasks]] {name}", source, text)
        if "lengths" not in entry:
            raise InputError(f"{source}: task {name} has no lengths: add lengths = [1024, 2048, 4096]")
        _typed(entry.get("settings", []), list, "settings", source, text)
        values = _values(entry, TASK_OPTIONS, source, text)
        values["lengths"] = [_length(x, "lengths", source, text, entry["lengths"]) for x in entry["lengths"]]
        params = params_from(values, {k: entry.get(k) for k in option_names})
        only = entry.get("settings")
        labels = {s.label for s in settings}
        if only is not None and not (all(isinstance(x, str) for x in only) and set(only) <= labels):
            line = _line_of(text, "settings")
            raise InputError(f"{source}:{line or '?'}: task {name} settings must list labels of [[settings]] "
                             f"entries ({', '.join(sorted(str(x) for x in labels))})")
        tasks.append(TaskSpec(name, params, only))
    return run, settings, tasks


def _run_options(run: dict[str, Any], flags: Flags, default_out: Path, suite: str | None) -> RunOptions:
    """The run's options: a flag given wins over the suite's [run] value, which wins over the default."""
    flagged = {k: v for k, v in flags.run.items() if v is not None}
    given = {o.name: o.default for o in RUN_OPTIONS} | run | flagged
    out = Path(given["out"] or default_out)
    if given["chunk_size"] is not None and given["chunk_size"] < 1:
        raise InputError(f"--chunk-size must be a positive number of tokens (got {given['chunk_size']})")
    memory = given["max_memory"]
    writable_folder(out, "--out")
    return RunOptions(out=out, chunk_size=given["chunk_size"], strategy=given["strategy"],
                      batch_size=batch_value(given["batch_size"]),
                      max_memory=parse_size(str(memory)) if memory is not None else None,
                      dry_run=flags.dry_run, progress=not flags.no_progress, command=list(flags.argv),
                      suite=suite, verbose=flags.verbose, report=given["report"])


def load_suite(name_or_path: str, flags: Flags) -> Suite:
    """A packaged or file suite; `--out`, `--chunk-size`, `--max-memory`, `--dtype`, `--device`, `--attn`
    override it."""
    source, text = _read(name_or_path)
    run, settings, tasks = parse_suite(text, source)
    shared = {k: flags.setting[k] for k in SHARED if flags.setting.get(k) is not None}
    settings = [replace(s, **shared) for s in settings]
    for setting in settings:
        check_device(setting.device)
    options = _run_options(run, flags, Path("results") / Path(name_or_path).stem, source)
    return Suite(settings, tasks, options)


def check_device(device: str | None) -> None:
    """A device torch cannot parse, or a GPU this machine lacks, is bad input found before the run folder (and
    not a traceback from moving the model there)."""
    if device in (None, "auto"):
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"unknown --device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device}: no CUDA device on this machine: use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise InputError(f"--device {device}: this machine has {count} CUDA device(s): use cuda:0 to "
                             f"cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS is not available here: use --device cpu")


def task_options(flags: Flags, name: str) -> dict[str, Any]:
    """The task's options from the flags: each option's own conversion of its flag text (None = not given)."""
    return {o.name: o.from_flag(flags.task_options.get(o.name)) for o in get_task(name).options}


def task_list(text: str) -> list[str]:
    """--tasks 'perplexity,passkey' -> names in order, each once (each checked by get_task)."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise InputError(f"--tasks {text!r} names no task: e.g. --tasks perplexity,passkey")
    for name in names:
        get_task(name)
    return names


def from_flags(flags: Flags) -> Suite:
    """One setting and one or more tasks from `rope-harness run --model ... --tasks ... --lengths ...`."""
    if not flags.params.get("lengths"):
        raise InputError("--lengths is required with --model: e.g. --lengths 1024,2048,4096")
    setting = setting_from({k: v for k, v in flags.setting.items() if v is not None})
    check_device(setting.device)
    names = task_list(flags.task)
    given = {k: v for k, v in flags.params.items() if v is not None}  # --samples 0 is an error, no default
    specs = [TaskSpec(name, params_from(given, task_options(flags, name))) for name in names]
    name = setting.label or f"{Path(setting.model.replace('zoo:', '')).name}-{'-'.join(names)}"
    default_out = Path("results") / safe_name(name)  # one folder under results/, never hidden or outside it
    return Suite([setting], specs, _run_options({}, flags, default_out, None))
