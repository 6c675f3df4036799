"""`rope-harness` command line: law, run, report, zoo.

Bad input prints one line (`rope-harness: error: ...`) and exits 2 with nothing half-written; a run
that finishes with failed cells exits 1; otherwise 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from harness.errors import InputError


def parse_size(text: str) -> int:
    """'24GiB', '500M', '2e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?B)?\s*", text or "", re.IGNORECASE)
    if not match:
        raise InputError(f"--max-memory {text!r} is not a size: use e.g. 8GiB, 500MiB or 2e9")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def parse_lengths(text: str) -> list[int]:
    try:
        values = [int(float(x)) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--lengths {text!r} is not a comma list of integers: use e.g. --lengths 1024,2048,4096") from None
    return sorted(set(values))


def parse_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{flag} {text!r} is not a comma list of numbers: use e.g. {flag} 0,0.5,1") from None


def parse_param(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE parsed as JSON when it is JSON (numbers, lists), else kept as text."""
    import json

    if "=" not in text:
        raise InputError(f"--rope-param {text!r} is not KEY=VALUE: e.g. --rope-param beta_fast=32")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def add_run_parser(sub) -> None:
    from tasks.base import get_task, task_names

    p = sub.add_parser("run", help="evaluate models on a task grid (no arguments: the quick suite on the zoo)",
                       description="Run a suite file, flags for one setting, or (no arguments) the quick suite.")
    p.add_argument("suite", nargs="?", help="suite TOML file or packaged suite name (quick, paper, compare-scaling)")
    p.add_argument("--model", help="local folder, hub id, or zoo:NAME")
    p.add_argument("--rope-theta", type=float, help="RoPE base to evaluate with")
    p.add_argument("--rope-type", help="default, linear, ntk, dynamic, yarn, llama3, longrope")
    p.add_argument("--rope-factor", type=float, help="scaling factor for linear/ntk/dynamic/yarn/llama3")
    p.add_argument("--rope-param", action="append", default=[], metavar="KEY=VALUE", help="extra RoPE parameter (repeatable)")
    p.add_argument("--pretrain-base", type=float, help="law input: the pre-training base b0")
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


def run_command(args: argparse.Namespace) -> int:
    from harness import runner, suite
    from harness.distributed import any_rank_failed, init_distributed, is_rank_zero

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

    parser = argparse.ArgumentParser(prog="rope-harness", description="Long-context evaluation of RoPE models, "
                                     "with the RoPE extrapolation scaling law drawn on every curve.")
    parser.add_argument("-v", "--verbose", action="store_true")
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
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s")
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
