"""The engine factory: the one place that knows both engines behind the contract (harness/core/contract.py).

The in-process engine (harness.engine: weights loaded here, RoPE verified) and the served engine
(harness.serving: a server launched with the override, or servers given by URL, checked by a probe) are
peers. The run wing asks this module, and only this module, to check a setting before anything is written
(`check_setting`, `check_task`: the engine is known and installed, can express the override, returns what
the task scores), to plan without weights (`planner`: the dry run's plans are the run's, from the same
inputs), to describe what it would start (`preview`) and to open the engine for a run (`opened`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.core import heartbeat
from harness.core.errors import InputError, one_line
from harness.engine.planner import Plan, budget_source, default_budget, make_plan
from harness.model import models
from harness.serving.backend import ServedPlan
from harness.serving.engines import CAPABILITIES, ENGINES, missing

__all__ = ["ENGINES", "EngineOptions", "EngineSetting", "Opened", "budget_line", "check_options",
           "check_setting", "check_task", "engine_name", "evaluator_loader", "opened", "planner", "preview",
           "DryPlanner"]
SERVED = "served"  # the device a served engine computes on, as records and the address-space cap read it


class EngineSetting(Protocol):
    """What an engine is opened from (harness.run.suite.Setting)."""

    model: str
    dtype: str | None
    device: str | None
    attn: str | None
    override: Any  # harness.model.rope_config.RopeOverride
    serve: str | None
    engine_python: str | None  # the engine's interpreter (its own environment); None: this one
    server_urls: list[str]
    tensor_parallel: int
    data_parallel: int
    probe: bool

    @property
    def served(self) -> bool: ...


class EngineOptions(Protocol):
    """How an in-process engine plans (harness.run.suite.RunOptions)."""

    chunk_size: int | None
    strategy: str
    batch_size: int | str
    max_memory: int | None


@dataclass(frozen=True)
class Opened:
    """An engine opened for a setting, and what records and run.json say of it."""

    engine: Any  # the contract's verbs (harness.core.contract.Engine)
    device: str  # a torch device, or SERVED
    manifest: dict[str, Any]  # the RoPE manifest (a served one has no frequency bytes)
    fingerprint: str
    dtype: str
    attn: str  # the attention implementation, or the engine's name when served
    budget: int | None = None  # the in-process engine's memory budget (the CPU address-space cap backs it)
    budget_source: str = ""  # where it comes from, in words
    fields: dict[str, Any] = field(default_factory=dict)  # record fields of a served engine (engine, probe_*)
    info: dict[str, Any] = field(default_factory=dict)  # run.json's: the launch command, the servers


def engine_name(setting: EngineSetting) -> str | None:
    """What records name as the setting's engine: None in-process (records without `engine`)."""
    return (setting.serve or "server") if setting.served else None


def budget(device: str, max_memory: int | None) -> int:
    """The memory budget the planner plans against: --max-memory, else the device's default."""
    return max_memory if max_memory is not None else default_budget(device)


# ------------------------------------------------------------------------------------------ checks


def check_options(setting: EngineSetting) -> None:
    """A served setting names a known engine, http(s) server URLs and parallel sizes >= 1 (else one line)."""
    if setting.serve is not None and setting.serve not in ENGINES:
        raise InputError(f"unknown --serve {setting.serve!r}: use one of {', '.join(ENGINES)}")
    bad = [u for u in setting.server_urls if not (isinstance(u, str) and u.startswith(("http://", "https://")))]
    if bad:
        raise InputError(f"--server-url {bad[0]!r} is not an http(s) URL: e.g. --server-url "
                         "http://127.0.0.1:8000")
    for name in ("tensor_parallel", "data_parallel"):
        if not isinstance(getattr(setting, name), int) or getattr(setting, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be an integer >= 1 "
                             f"(got {getattr(setting, name)!r})")
    if setting.engine_python is not None and setting.serve is None:
        raise InputError("--engine-python is the interpreter of a launched engine: add --serve vllm, sglang "
                         "or llama.cpp")
    named = [key for key in setting.override.params if "." in key]  # one layer type's RoPE (Gemma 3's local)
    if setting.served and named:
        raise InputError(f"--rope-param {named[0]}: a served engine takes the global layers' RoPE only (it "
                         "would drop this silently): run this setting in-process (drop --serve/--server-url)")
    if not setting.served and (setting.tensor_parallel, setting.data_parallel) != (1, 1):
        raise InputError("--tensor-parallel/--data-parallel apply to a served engine: add --serve vllm or "
                         "sglang")


def check_setting(setting: EngineSetting, checkpoint: models.Checkpoint, tolerant: bool,
                  notes: list[str]) -> None:
    """Before anything is written: a served engine is installed here and can express the override, and
    every given server answers; else one line (a dry run notes what it cannot check instead)."""
    from harness.serving.backend import SERVED_HEADROOM
    from harness.serving.client import ServerError
    from harness.serving.client import models as served_models
    from harness.serving.engines import launch_command

    if setting.serve is not None:
        launch_command(setting.serve, checkpoint.path, setting.override, max_len=1 + SERVED_HEADROOM,
                       host="127.0.0.1", port=1, tensor_parallel=setting.tensor_parallel,
                       data_parallel=setting.data_parallel, config=checkpoint.source_config,
                       applied=checkpoint.config, python=setting.engine_python, dtype=setting.dtype)
        why = missing(setting.serve, setting.engine_python)
        if why and not tolerant:
            raise InputError(why)
        if why:
            notes.append(why)
    for url in [] if tolerant else setting.server_urls:
        try:
            served_models(url)
        except ServerError as exc:
            raise InputError(f"cannot reach --server-url {url} ({exc}): start the server or fix the "
                             "URL") from None


def check_task(setting: EngineSetting, task: Any) -> None:
    """A task that scores every prompt token, on an engine that does not return those log-probs: one line."""
    name = engine_name(setting)
    if name is None or not task.needs_prompt_logprobs:
        return
    capability = CAPABILITIES.get(name)
    if capability is None or not capability.prompt_logprobs:
        raise InputError(f"{task.name} needs every prompt token's log-prob, which {name} does not serve "
                         "(llama.cpp gives none for the first token and sorts the vocabulary per token): run "
                         f"{task.name} in-process (drop --serve/--server-url) or serve with vllm")


# ---------------------------------------------------------------------------------- planning, preview


@dataclass(frozen=True)
class DryPlanner:
    """The run's plans without weights, and the time its passes will take (an estimate; None: served)."""

    plan: Callable[[int, bool], Plan | ServedPlan]
    seconds: Callable[[list[tuple[int, int]]], float | None]
    length_dependent: bool = False

    def __call__(self, length: int, generation: bool = False) -> Plan | ServedPlan:
        return self.plan(length, generation)


def planner(setting: EngineSetting, config: Any, options: EngineOptions) -> DryPlanner | None:
    """(length, generation) -> the plan the run's engine will make, from the same inputs without weights
    (device, dtype, attention, parameter count, budget, whether the family streams), and the seconds its
    passes take; None when the config could not be read. A served setting's engine owns memory and time."""
    if setting.served:
        served = ServedPlan(engine_name(setting) or "server")
        return DryPlanner(lambda length, generation=False: served, lambda passes: None)
    if config is None:
        return None
    import torch
    from transformers import AutoModelForCausalLM

    from harness.engine.estimate import seconds, throughput
    from harness.engine.stream import model_refusal
    from harness.model.gguf import cache_root
    from harness.model.rope_config import is_length_dependent

    device = models.pick_device(setting.device)
    dtype, attn = models.pick_dtype(setting.dtype, device), models.pick_attn(setting.attn, device)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in skeleton.parameters())
    stream_ok, memory = model_refusal(skeleton) is None, budget(device, options.max_memory)
    plans: dict[tuple[int, bool], Plan] = {}

    def plan(length: int, generation: bool = False) -> Plan:
        if (length, generation) not in plans:
            plans[length, generation] = make_plan(
                config, length, dtype=dtype, attn=attn, n_params=n_params, max_memory=memory,
                chunk_size=options.chunk_size, strategy=options.strategy, stream_ok=stream_ok,
                generation=generation, cuda=device.startswith("cuda"))
        return plans[length, generation]

    def timed(passes: list[tuple[int, int]]) -> float | None:
        if device != "cpu":  # the calibration measures this machine's CPU
            return None
        return seconds(config, n_params, passes, throughput(dtype, cache_root()))

    return DryPlanner(plan, timed, is_length_dependent(config))


def budget_line(setting: EngineSetting, options: EngineOptions) -> str:
    """The memory budget an in-process setting plans against, and where it comes from (the dry run's)."""
    from harness.core.values import fmt_size

    device = models.pick_device(setting.device)
    return (f"memory budget on {device}: {fmt_size(budget(device, options.max_memory))} "
            f"({budget_source(device, options.max_memory)})")


def preview(setting: EngineSetting, checkpoint: models.Checkpoint, longest: int) -> str:
    """What a served setting will start (or use) and check: the dry run's line."""
    from harness.serving.backend import SERVED_HEADROOM, launch_preview
    from harness.serving.probe import PROBE_LENGTH

    if setting.server_urls:
        where = f"uses {', '.join(setting.server_urls)}"
    else:
        where = "launches " + launch_preview(checkpoint, setting.serve, longest + SERVED_HEADROOM,
                                             setting.tensor_parallel, setting.data_parallel,
                                             setting.engine_python, setting.dtype)
    probe = (f"then probes {min(PROBE_LENGTH, longest)} tokens against the in-process model (CPU, float32)"
             if setting.probe else "no probe (--no-probe)")
    return f"{where}; {probe}"


# ------------------------------------------------------------------------------------------ opening


@contextlib.contextmanager
def opened(setting: EngineSetting, checkpoint: models.Checkpoint, options: EngineOptions, longest: int,
           log: Path, label: str, warn: Callable[[str], None]) -> Iterator[Opened]:
    """The setting's engine for the length of a run: the model loaded in-process, or a server launched with
    the override (stopped on exit, error or Ctrl-C) or given by URL, checked by the probe. A server that
    cannot start, or that does not serve the asked setting, opens as an engine whose every verb raises why:
    the setting's cells are recorded as errors and the run goes on."""
    if setting.served:
        with _served(setting, checkpoint, longest, log, label, warn) as engine:
            yield engine
        return
    from harness.engine.engine import Engine

    with heartbeat.phase(f"{label}: loading {setting.model}"):
        loaded = models.load(checkpoint, dtype=setting.dtype, device=setting.device, attn=setting.attn)
    memory = budget(loaded.device, options.max_memory)
    engine = Engine(loaded, chunk_size=options.chunk_size, max_memory=memory, strategy=options.strategy,
                    batch_size=options.batch_size)
    yield Opened(engine, loaded.device, loaded.manifest, loaded.fingerprint, loaded.dtype, loaded.attn,
                 memory, budget_source(loaded.device, options.max_memory))


@contextlib.contextmanager
def _served(setting: EngineSetting, checkpoint: models.Checkpoint, longest: int, log: Path, label: str,
            warn: Callable[[str], None]) -> Iterator[Opened]:
    from harness.serving.backend import SERVED_HEADROOM, UnavailableEngine, served

    name = engine_name(setting) or "server"
    with contextlib.ExitStack() as stack:
        try:
            engine, info = stack.enter_context(served(
                checkpoint, setting.serve, setting.server_urls, max_len=longest + SERVED_HEADROOM, log=log,
                tensor_parallel=setting.tensor_parallel, data_parallel=setting.data_parallel,
                python=setting.engine_python, dtype=setting.dtype))
        except (RuntimeError, OSError) as exc:  # ServerError included: recorded per cell
            engine = UnavailableEngine(name, f"{name} server unavailable: {one_line(exc)}")
            info = {"engine": name, "engine_version": None, "serve_command": None, "server_urls": []}
        else:
            engine, probe = _checked(engine, setting, checkpoint, longest, f"{label}: {name}", warn)
            info.update(probe)
        fields = {k: v for k, v in info.items() if k.startswith(("engine", "probe_"))}
        # the override the engine was told (no weights here: no inv_freq bytes)
        yield Opened(engine, SERVED, checkpoint.manifest(), checkpoint.fingerprint, engine.dtype, name,
                     None, "", fields, info)


def _checked(engine: Any, setting: EngineSetting, checkpoint: models.Checkpoint, longest: int, who: str,
             warn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The served engine after its probe (harness.serving.probe) and the probe's record fields; an engine that
    did not apply the override is replaced by one whose every cell records why."""
    from dataclasses import replace

    from harness.engine.engine import Engine
    from harness.serving.backend import UnavailableEngine
    from harness.serving.probe import PROBE_LENGTH, Probe, fits_in_memory, probe_ids, run_probe

    def load(asked: bool) -> Engine:
        described = checkpoint if asked else replace(
            models.describe(checkpoint.model_id, None, checkpoint.revision, checkpoint.trust_remote_code),
            tokenizer=checkpoint.tokenizer)
        return Engine(models.load(described, dtype="float32", device="cpu"))

    try:
        why = "--no-probe" if not setting.probe else fits_in_memory(checkpoint.config)
        if why:
            probe = Probe(f"skipped: {why}")
        else:
            ids = probe_ids(checkpoint.tokenizer, min(PROBE_LENGTH, longest))
            probe = run_probe(engine.client, ids, load, checkpoint.override.changes_rope())
    except (RuntimeError, OSError, ValueError, InputError) as exc:  # recorded in the records, not fatal
        probe = Probe(f"failed: {one_line(exc)}")
    if probe.verdict in ("override applied", "no override"):
        print(f"rope-harness: {who} {probe.describe()}", file=sys.stderr)
    else:
        warn(f"{who} {probe.describe()}")
    if probe.refuses:
        engine = UnavailableEngine(engine.engine, f"{engine.engine} does not serve the asked setting: "
                                   f"{probe.describe()}", retry=False)
    return engine, probe.fields()


def evaluator_loader(engine: Any) -> Callable[[str], Any]:
    """A task's evaluator model by name -> its in-process engine on `engine`'s device, dtype and memory
    settings; the last one is kept for the next setting (one: memory)."""
    from harness.engine.engine import Engine

    def load(name: str):
        key = (name, str(engine.device), engine.dtype)
        if key not in _EVALUATORS:
            _EVALUATORS.clear()
            loaded = models.load(name, dtype=engine.dtype, device=str(engine.device))
            _EVALUATORS[key] = Engine(loaded, chunk_size=engine.chunk_size, max_memory=engine.max_memory,
                                      strategy=engine.strategy)
        return _EVALUATORS[key]

    return load


_EVALUATORS: dict[tuple[str, str, str], Any] = {}
