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
from harness.core.values import batch_value, length_value, parse_lengths, parse_param, parse_size, safe_name
from harness.model.rope_config import RopeOverride
from tasks.base import TaskParams, get_task

RUN_KEYS = {"out", "dtype", "device", "attn", "chunk_size", "strategy", "batch_size", "max_memory", "report"}
SETTING_KEYS = {"model", "label", "rope_theta", "rope_type", "rope_factor", "rope_params", "pretrain_base",
                "train_len", "tune_len", "dtype", "device", "attn", "revision", "trust_remote_code", "serve",
                "server_url", "tensor_parallel", "data_parallel", "probe"}
TASK_KEYS = {"name", "lengths", "samples", "seed", "corpus", "bos", "settings"}
DEFAULT_SAMPLES = 4
# The type each key must have (TOML would otherwise hand a string to code that expects a number, or make
# bool("false") true). Task options (depths, ...) are checked by their task.
RUN_TYPES = {"out": str, "dtype": str, "device": str, "attn": str, "chunk_size": int, "strategy": str,
             "report": bool}
SETTING_TYPES = {"model": str, "label": str, "rope_type": str, "dtype": str, "device": str, "attn": str,
                 "revision": str, "trust_remote_code": bool, "rope_params": dict, "rope_theta": float,
                 "rope_factor": float, "pretrain_base": float, "serve": str, "server_url": list,
                 "tensor_parallel": int, "data_parallel": int, "probe": bool}  # train_len, tune_len: _length
TASK_TYPES = {"name": str, "lengths": list, "samples": int, "seed": int, "corpus": str, "bos": bool,
              "settings": list}
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


@dataclass
class Flags:
    """`rope-harness run` flags as typed values (the CLI builds this; nothing below it sees argparse)."""

    suite: str | None = None
    model: str | None = None
    rope_theta: float | None = None
    rope_type: str | None = None
    rope_factor: float | None = None
    rope_param: list[str] = field(default_factory=list)
    pretrain_base: float | None = None
    train_len: int | None = None
    tune_len: int | None = None
    task: str = "perplexity"  # a comma list: --tasks perplexity,passkey (--task is the same flag)
    lengths: str | None = None
    samples: int | None = None
    seed: int = 0
    corpus: str | None = None
    out: str | None = None
    label: str | None = None
    dtype: str | None = None
    device: str | None = None
    attn: str | None = None
    chunk_size: int | None = None
    strategy: str | None = None
    batch_size: int | str | None = None
    max_memory: str | None = None
    no_bos: bool = False
    revision: str | None = None
    trust_remote_code: bool = False
    serve: str | None = None
    server_url: list[str] = field(default_factory=list)
    tensor_parallel: int = 1
    data_parallel: int = 1
    no_probe: bool = False
    dry_run: bool = False
    no_progress: bool = False
    verbose: bool = False
    task_options: dict[str, Any] = field(default_factory=dict)  # raw flag values of every task option
    argv: list[str] = field(default_factory=list)


@dataclass
class Suite:
    settings: list[Setting]
    tasks: list[TaskSpec]
    options: RunOptions
    report: bool = True


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


def _check_types(table: dict[str, Any], types: dict[str, type], source: str, text: str) -> None:
    for key, kind in types.items():
        if key in table:
            _typed(table[key], kind, key, source, text)


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
    _check_types(run, RUN_TYPES, source, text)
    memory = run.get("max_memory")
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (str, int))):
        raise InputError(f"{source}:{_line_of(text, 'max_memory') or '?'}: max_memory must be a size such as "
                         f"\"8GiB\" or a number of bytes, got {run['max_memory']!r}")
    if not data.get("settings"):
        raise InputError(f"{source}: no [[settings]]: add at least one with model = \"...\"")
    if not data.get("tasks"):
        raise InputError(f"{source}: no [[tasks]]: add at least one with name and lengths")
    settings = []
    for entry in _tables(data, "settings", source, text):
        _check_keys(entry, SETTING_KEYS, "[[settings]]", source, text)
        if "model" not in entry:
            raise InputError(f"{source}: a [[settings]] entry has no model: add model = \"PATH_OR_ID\"")
        _check_types(entry, SETTING_TYPES, source, text)
        num = {k: _typed(entry[k], float, k, source, text)
               for k in ("rope_theta", "rope_factor", "pretrain_base") if k in entry}
        ints = {k: _length(entry[k], k, source, text) for k in ("train_len", "tune_len") if k in entry}
        override = RopeOverride(theta=num.get("rope_theta"), rope_type=entry.get("rope_type"),
                                       factor=num.get("rope_factor"),
                                       params=dict(entry.get("rope_params", {})),
                                       pretrain_base=num.get("pretrain_base"),
                                       train_len=ints.get("train_len"),
                                       tune_len=ints.get("tune_len"))
        settings.append(Setting(
            entry["model"], override, entry.get("label"), entry.get("dtype", run.get("dtype")),
            entry.get("device", run.get("device")), entry.get("attn", run.get("attn")), entry.get("revision"),
            entry.get("trust_remote_code", False), entry.get("serve"), list(entry.get("server_url", [])),
            entry.get("tensor_parallel", 1), entry.get("data_parallel", 1), entry.get("probe", True)))
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
        _check_types(entry, TASK_TYPES, source, text)
        lengths = [_length(x, "lengths", source, text, entry["lengths"]) for x in entry["lengths"]]
        params = TaskParams(lengths=sorted(set(lengths)), samples=entry.get("samples", DEFAULT_SAMPLES),
                            seed=entry.get("seed", 0), corpus=entry.get("corpus", "stdlib"),
                            bos=entry.get("bos", True),
                            options={k: entry.get(k) for k in option_names})
        only = entry.get("settings")
        labels = {s.label for s in settings}
        if only is not None and not (all(isinstance(x, str) for x in only) and set(only) <= labels):
            line = _line_of(text, "settings")
            raise InputError(f"{source}:{line or '?'}: task {name} settings must list labels of [[settings]] "
                             f"entries ({', '.join(sorted(str(x) for x in labels))})")
        tasks.append(TaskSpec(name, params, only))
    return run, settings, tasks


def _run_options(run: dict[str, Any], flags: Flags, default_out: Path, suite: str | None) -> RunOptions:
    out = Path(flags.out) if flags.out else Path(run.get("out", default_out))
    chunk = flags.chunk_size if flags.chunk_size is not None else run.get("chunk_size")
    memory = flags.max_memory if flags.max_memory is not None else run.get("max_memory")
    if chunk is not None and chunk < 1:
        raise InputError(f"--chunk-size must be a positive number of tokens (got {chunk})")
    strategy = flags.strategy or run.get("strategy") or "auto"
    if strategy not in ("auto", "single", "stream", "prefill"):
        raise InputError(f"strategy {strategy!r} is unknown: use auto, single, stream or prefill")
    batch = flags.batch_size if flags.batch_size is not None else run.get("batch_size", 1)
    if batch_value(batch) is None:
        raise InputError(f"batch_size {batch!r} is not a batch size: use a whole number >= 1 or \"auto\"")
    writable_folder(out, "--out")
    return RunOptions(out=out, chunk_size=chunk, strategy=strategy, batch_size=batch_value(batch),
                      max_memory=parse_size(str(memory)) if memory is not None else None,
                      dry_run=flags.dry_run, progress=not flags.no_progress, command=list(flags.argv),
                      suite=suite, verbose=flags.verbose)


def load_suite(name_or_path: str, flags: Flags) -> Suite:
    """A packaged or file suite; `--out`, `--chunk-size`, `--max-memory`, `--dtype`, `--device`, `--attn`
    override it."""
    source, text = _read(name_or_path)
    run, settings, tasks = parse_suite(text, source)
    settings = [replace(s, dtype=flags.dtype or s.dtype, device=flags.device or s.device,
                        attn=flags.attn or s.attn) for s in settings]
    for setting in settings:
        check_device(setting.device)
    options = _run_options(run, flags, Path("results") / Path(name_or_path).stem, source)
    return Suite(settings, tasks, options, bool(run.get("report", True)))


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
    if not flags.lengths:
        raise InputError("--lengths is required with --model: e.g. --lengths 1024,2048,4096")
    override = RopeOverride(theta=flags.rope_theta, rope_type=flags.rope_type, factor=flags.rope_factor,
                            params=dict(parse_param(p) for p in flags.rope_param),
                            pretrain_base=flags.pretrain_base, train_len=flags.train_len,
                            tune_len=flags.tune_len)
    setting = Setting(flags.model, override, flags.label, flags.dtype, flags.device, flags.attn,
                      flags.revision, flags.trust_remote_code, flags.serve, list(flags.server_url or []),
                      flags.tensor_parallel, flags.data_parallel, not flags.no_probe)
    check_device(setting.device)
    # --samples 0 is an error, not the default
    samples = DEFAULT_SAMPLES if flags.samples is None else flags.samples
    names = task_list(flags.task)
    lengths = parse_lengths(flags.lengths)
    specs = [TaskSpec(name, TaskParams(lengths=list(lengths), samples=samples, seed=flags.seed,
                                       corpus=flags.corpus or "stdlib", bos=not flags.no_bos,
                                       options=task_options(flags, name))) for name in names]
    name = flags.label or f"{Path(flags.model.replace('zoo:', '')).name}-{'-'.join(names)}"
    default_out = Path("results") / safe_name(name)  # one folder under results/, never hidden or outside it
    return Suite([setting], specs, _run_options({}, flags, default_out, None))
