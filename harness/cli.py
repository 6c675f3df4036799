"""`rope-harness` command line: law, run, report, zoo.

Bad input prints one line (`rope-harness: error: ...`) and exits 2 with nothing half-written; a run
that finishes with failed cells exits 1; otherwise 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys

from harness import __version__
from harness.errors import InputError

# `run` flags that describe one setting and task: they apply with --model only, never to a suite.
RUN_LEVEL_FLAGS = {"suite", "out", "dtype", "device", "attn", "chunk_size", "max_memory", "dry_run", "no_progress",
                   "no_report", "func", "flag_defaults"}


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the bad-input contract), naming --help as the fix."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_size(text: str) -> int:
    """'24GiB', '500M', '2e9' -> bytes (a positive, finite size)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?B)?\s*", text or "", re.IGNORECASE)
    try:
        number = float(match.group(1)) if match else math.nan
    except ValueError:  # '1.5.5G' passes the pattern but is no number
        number = math.nan
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()] if match else 1
    if not (math.isfinite(number) and number * scale >= 1):
        raise InputError(f"--max-memory {text!r} is not a positive size: use e.g. 8GiB, 500MiB or 2e9")
    if number * scale < 1 << 20:  # '--max-memory 24' meant GiB: 24 bytes would only ever record oom
        raise InputError(f"--max-memory {text!r} is {int(number * scale)} bytes, less than 1 MiB: give the unit, "
                         f"e.g. {match.group(1)}GiB")
    return int(number * scale)


def parse_lengths(text: str) -> list[int]:
    """'1024,2048' or '1e3' -> sorted unique ints; '64.5' or 'inf' are refused, never truncated."""
    try:
        numbers = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        numbers = [math.nan]
    if not all(math.isfinite(x) and x.is_integer() for x in numbers):
        raise InputError(f"--lengths {text!r} is not a comma list of integers: use e.g. --lengths 1024,2048,4096")
    return sorted({int(x) for x in numbers})


def finite_float(text: str) -> float:
    """argparse type for RoPE numbers: inf and nan would run and be recorded as a setting."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number: pass e.g. 1e6")
    return value


def parse_floats(text: str, flag: str) -> list[float]:
    """A comma list of numbers; an empty one is an error (it would silently mean the task's default)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise InputError(f"{flag} {text!r} is not a comma list of numbers: use e.g. {flag} 0,0.5,1")
    return values


def parse_param(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE as JSON (number, list, true/false): RoPE parameters are never free text, and a
    text value would only fail later, inside the model's RoPE init."""
    import json

    key, sep, value = text.partition("=")
    if not key.strip() or not sep:
        raise InputError(f"--rope-param {text!r} is not KEY=VALUE: e.g. --rope-param beta_fast=32")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if parsed is None or isinstance(parsed, (str, dict)) or (isinstance(parsed, float) and not math.isfinite(parsed)):
        raise InputError(f"--rope-param {text!r}: the value must be a number, a JSON list or true/false: "
                         f"e.g. --rope-param {key.strip()}=32")
    return key.strip(), parsed


def add_run_parser(sub) -> None:
    from tasks.base import get_task, task_names

    p = sub.add_parser("run", help="evaluate models on a task grid (no arguments: the quick suite on the zoo)",
                       description="Run a suite file, flags for one setting, or (no arguments) the quick suite.")
    p.add_argument("suite", nargs="?", help="suite TOML file or packaged suite name (quick, paper, compare-scaling)")
    p.add_argument("--model", help="local folder, hub id, or zoo:NAME")
    p.add_argument("--rope-theta", type=finite_float, help="RoPE base to evaluate with")
    p.add_argument("--rope-type", help="default, linear, ntk, dynamic, yarn, llama3, longrope")
    p.add_argument("--rope-factor", type=finite_float, help="scaling factor for linear/ntk/dynamic/yarn/llama3")
    p.add_argument("--rope-param", action="append", default=[], metavar="KEY=VALUE", help="extra RoPE parameter (repeatable)")
    p.add_argument("--pretrain-base", type=finite_float, help="law input: the pre-training base b0")
    p.add_argument("--train-len", type=int, help="law input: pre-training length")
    p.add_argument("--tune-len", type=int, help="law input: fine-tuning length")
    p.add_argument("--task", default="perplexity", help=f"one of {', '.join(task_names())}")
    p.add_argument("--lengths", help="comma list of context lengths, e.g. 1024,2048,4096")
    p.add_argument("--samples", type=int, default=None, help="samples per length (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default=None, help="text file, folder, .jsonl[:FIELD], stdlib, or hf:NAME[:CONFIG][:SPLIT][:FIELD]")
    p.add_argument("--out", help="run folder (default results/<label>)")
    p.add_argument("--label", help="setting label (default <model>:<rope_type>:<theta>[:f<factor>])")
    p.add_argument("--dtype", help="float32, bfloat16, float16 or auto (float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, or auto (device_map=auto across GPUs)")
    p.add_argument("--attn", choices=["sdpa", "flash_attention_2", "eager"])
    p.add_argument("--chunk-size", type=int, help="force chunked prefill with this many tokens per chunk")
    p.add_argument("--max-memory", help="memory budget, e.g. 8GiB: cells the planner says exceed it are recorded as oom")
    p.add_argument("--no-bos", action="store_true", help="do not prepend BOS")
    p.add_argument("--revision", help="hub revision")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="list cells and estimated memory, load no model")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-report", action="store_true", help="do not render the report after the run")
    shared = p.add_argument_group("generation tasks (passkey, longqa)")
    shared.add_argument("--depths", help="comma list of needle depths in [0, 1]")
    shared.add_argument("--max-new-tokens", type=int)
    shared.add_argument("--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    for name in task_names():
        group = p.add_argument_group(f"{name} task")
        get_task(name).add_arguments(group)
    p.set_defaults(func=run_command)
    p.set_defaults(flag_defaults=vars(p.parse_args([])))  # to tell the flags a user gave from their defaults


def _check_flags(args: argparse.Namespace) -> None:
    """Setting/task flags never silently ignored: not with a suite, not without --model, not for another task."""
    from tasks.base import get_task, task_names

    defaults = getattr(args, "flag_defaults", None)
    if defaults is None:  # a Namespace built by hand (tests): nothing to compare with
        return
    given = [k for k, v in defaults.items() if k not in RUN_LEVEL_FLAGS and getattr(args, k, v) != v]
    flags = ", ".join("--" + k.replace("_", "-") for k in given)
    them, needs = ("them", "need") if len(given) > 1 else ("it", "needs")
    if args.suite is not None and given:
        raise InputError(f"{flags} cannot be combined with suite {args.suite!r}: set {them} in the suite file, "
                         "or drop the suite and pass --model")
    if args.suite is None and args.model is None and given:
        raise InputError(f"{flags} {needs} --model: e.g. --model zoo:base-1e4 --lengths 256,1024 "
                         "(with no --model, `run` runs the quick suite)")
    if args.suite is None and args.task in task_names():  # an unknown task is named by the suite loader
        own = set(get_task(args.task).option_names())
        for key in given:
            owners = [name for name in task_names() if key in get_task(name).option_names()]
            if owners and key not in own:
                raise InputError(f"--{key.replace('_', '-')} applies to --task {' or '.join(owners)}, not "
                                 f"{args.task}: drop it or pass --task {owners[0]}")


def run_command(args: argparse.Namespace) -> int:
    from harness import runner, suite
    from harness.distributed import any_rank_failed, init_distributed, is_rank_zero

    _check_flags(args)
    if args.suite is None and args.model is None:
        args.suite = "quick"
    loaded = suite.load_suite(args.suite, args) if args.suite is not None else suite.from_flags(args)
    distributed = init_distributed()
    result = runner.run(loaded.settings, loaded.tasks, loaded.options)
    exit_code = result.exit_code
    if loaded.options.dry_run:
        return 0
    if distributed:  # every rank's shard is complete before rank 0 reports on all of them
        exit_code = 1 if any_rank_failed(exit_code) else 0
        if not is_rank_zero():
            return exit_code
        result.table = runner.summary_table(loaded.options.out)
    _print_table(result)
    if loaded.report and not args.no_report and result.records + result.counts["skipped"] > 0:
        from harness.report import build_report

        out = build_report([loaded.options.out], loaded.options.out / "report")
        print(f"report: {out}")
    return exit_code


def _print_table(result) -> None:
    rows = result.table
    if not rows:
        print("no records")
        return
    print(f"\n{'setting':<36} {'task':<11} {'length':>7} {'ok':>4} {'failed':>6}  value")
    for r in rows:
        value = "-" if r["value"] is None else f"{r['metric']} {r['value']:.4g}"
        print(f"{r['setting'][:36]:<36} {r['task']:<11} {r['length']:>7} {r['ok']:>4} {r['failed']:>6}  {value}")
    failed = sum(r["failed"] for r in rows)
    print(f"{result.records} cells run now, {result.counts['skipped']} already recorded, {failed} failed in total")


def build_parser() -> argparse.ArgumentParser:
    from harness import law_cli, report, zoo

    parser = Parser(prog="rope-harness", description="Long-context evaluation of RoPE models, "
                    "with the RoPE extrapolation scaling law drawn on every curve.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"rope-harness {__version__}")
    sub = parser.add_subparsers(dest="command")
    law_cli.add_parser(sub)
    add_run_parser(sub)
    report.add_parser(sub)
    zoo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # the default job: the quick suite on the embedded zoo
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse's usage error (one line, see Parser), --help, --version: a code to return
            return int(exc.code or 0)
        if args.verbose:  # only then: a root handler would print every library warning a second time
            logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        args.argv = argv
        return int(args.func(args))
    except InputError as exc:
        print(f"rope-harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rope-harness: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout piped into `head` and closed: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
