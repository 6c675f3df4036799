"""`rope-harness` command line: law, run, report, zoo.

The only module that builds argparse parsers, and the only one that reaches both the run wing and the
report wing. Everything heavy is imported inside the command that needs it, so `rope-harness --help` and
`rope-harness law ...` load neither torch, transformers nor pandas.

Bad input prints one line (`rope-harness: error: ...`) and exits 2 with nothing half-written; a run
that leaves a cell of its grid without an ok record exits 1; otherwise 0. `rope-harness` alone prints
the help; `rope-harness run` alone runs the quick suite.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from pathlib import Path

from harness import __version__
from harness.core import heartbeat
from harness.core.errors import InputError, one_line
from harness.core.values import float_list, law_override, token_count

DEFAULT_TASK = "perplexity"  # run --model with no --task
# `run` flags that are not run options (harness.run.suite.RUN_OPTIONS) and may be combined with a suite
COMMAND_FLAGS = {"suite", "dry_run", "no_progress", "func", "flag_defaults", "verbose"}
LAW_DESCRIPTION = ("Predicted extrapolation limit of RoPE base settings (Liu et al., ICLR 2024) and their "
                   "retrieval bound (Men et al., NeurIPS 2024). Give the shape with --head-dim/--train-len, "
                   "or read it from a model config with --model (no weights).")


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the bad-input contract), naming --help as the fix."""

    commands: dict[str, argparse.ArgumentParser] = {}  # the top-level parser's subcommands, by name

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """Unknown arguments are named by the subcommand that got them, with the closest flag it knows:
        `run --lenghts 4k` -> "did you mean --lengths? (see rope-harness run --help)"."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            owner = self.commands.get(getattr(parsed, "command", None) or "", self)
            known = [o for action in owner._actions for o in action.option_strings if o.startswith("--")]
            hints = []
            for arg in extra:
                if arg.startswith("--"):
                    close = difflib.get_close_matches(arg.split("=", 1)[0], known, n=1, cutoff=0.6)
                    hints += [f"did you mean {close[0]} (not {arg.split('=', 1)[0]})?"] if close else []
            owner.error(f"unrecognized arguments: {' '.join(extra)}"
                        + (f"; {' '.join(hints)}" if hints else ""))
        return parsed


# ------------------------------------------------------------------------------------------------ law

def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head-dim", type=int, metavar="D",
                        help="rotary dimensions per head (head_dim x partial_rotary_factor)")
    parser.add_argument("--train-len", type=token_count, metavar="T",
                        help="pre-training context length in tokens")
    parser.add_argument("--base", type=float, action="append", metavar="B",
                        help="RoPE base (theta) used for fine-tuning, e.g. 1e6; repeat for several "
                             "(default with --model: the model's own rope_theta)")
    parser.add_argument("--tune-len", type=token_count, metavar="T2",
                        help="fine-tuning length in tokens (default: --train-len)")
    parser.add_argument("--target-len", type=token_count, metavar="L",
                        help="also report the bases that reach L: Liu's, the minimal one for retrieval, and "
                             "which of the two binds")
    parser.add_argument("--pretrain-base", type=float, metavar="B0",
                        help="pre-training base b0 (default 10000, or the model's rope_theta with --model)")
    parser.add_argument("--model", metavar="PATH_OR_ID",
                        help="read d, T_train and b0 from this model's config")
    parser.add_argument("--revision", metavar="R", help="model revision (with --model)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow custom model code (with --model)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def law_command(args: argparse.Namespace) -> int:
    from harness.cli.law import command

    return command(args)


def add_law_parser(sub) -> None:
    parser = sub.add_parser("law", help="scaling-law table: extrapolation limit per RoPE base",
                            description=LAW_DESCRIPTION)
    _add_arguments(parser)
    parser.set_defaults(func=law_command)


# ------------------------------------------------------------------------------------------------ run


def add_run_parser(sub) -> None:
    from harness.run.suite import RUN_OPTIONS, SETTING_OPTIONS, TASK_OPTIONS
    from tasks.base import all_options, get_task, task_names

    p = sub.add_parser("run",
                       help="evaluate models on a task grid (no arguments: the quick suite on the zoo)",
                       description="Run a suite file, flags for one setting, or (no arguments) the "
                                   "quick suite.")
    p.add_argument("suite", nargs="?",
                   help="suite TOML file or packaged suite name (quick, paper, compare-scaling)")
    p.add_argument("--tasks", "--task", dest="task", default=None, metavar="TASK[,TASK...]",
                   help=f"comma list of tasks from {', '.join(task_names())} (default perplexity)")
    for option in SETTING_OPTIONS + TASK_OPTIONS + RUN_OPTIONS:  # each declared once (harness.run.suite)
        option.add_to(p)
    p.add_argument("--dry-run", action="store_true",
                   help="per setting: cells, cells to run, largest memory estimate (per cell with -v); "
                        "loads no weights, writes nothing, reads hub configs from the local cache offline")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging; with --dry-run, one line per cell")
    groups: dict[str, object] = {}
    for option in all_options().values():  # a shared option (--depths) in a group naming every task
        owners = [name for name in task_names() if option.name in get_task(name).option_names()]
        title = _group_title(owners)
        if title not in groups:
            groups[title] = p.add_argument_group(title)
        option.add_to(groups[title])
    p.set_defaults(func=run_command)
    p.set_defaults(flag_defaults=vars(p.parse_args([])))  # to tell the flags a user gave from their defaults


def _group_title(owners: list[str]) -> str:
    """The help group of an option several tasks share: named in full up to three tasks."""
    if len(owners) == 1:
        return f"{owners[0]} task"
    if len(owners) < 4:
        return " and ".join(owners) + " tasks"
    return f"{', '.join(owners[:2])} and {len(owners) - 2} more tasks"


def _check_flags(args: argparse.Namespace) -> None:
    """Setting/task flags never silently ignored: not with a suite, not without --model, not for another
    task."""
    from harness.run.suite import RUN_OPTIONS, SHARED
    from tasks.base import get_task, task_names

    defaults = getattr(args, "flag_defaults", None)
    if defaults is None:  # a Namespace built by hand (tests): nothing to compare with
        return
    run_level = COMMAND_FLAGS | {o.name for o in RUN_OPTIONS} | set(SHARED)
    given = [k for k, v in defaults.items() if k not in run_level and getattr(args, k, v) != v]
    flags = ", ".join("--" + k.replace("_", "-") for k in given)
    them, needs = ("them", "need") if len(given) > 1 else ("it", "needs")
    if args.suite is not None and given:
        raise InputError(f"{flags} cannot be combined with suite {args.suite!r}: set {them} in the suite "
                         "file, or drop the suite and pass --model")
    if args.suite is None and args.model is None and given:
        raise InputError(f"{flags} {needs} --model: e.g. --model zoo:base-1e4 --lengths 256,1024 "
                         "(with no --model, `run` runs the quick suite)")
    names = [n.strip() for n in str(args.task or DEFAULT_TASK).split(",") if n.strip()]
    if args.suite is None and names and set(names) <= set(task_names()):  # an unknown task is named later
        own = {key for name in names for key in get_task(name).option_names()}
        for key in given:
            owners = [name for name in task_names() if key in get_task(name).option_names()]
            if owners and key not in own:
                fix = " or ".join(f"--task {owner}" for owner in owners)
                raise InputError(f"--{key.replace('_', '-')} applies to --task {' or '.join(owners)}, not "
                                 f"{', '.join(names)}: drop it or pass {fix}")


def _flags(args: argparse.Namespace):
    """The parsed `run` flags as the suite's typed Flags: every declared option's value by name (None: not
    given)."""
    from harness.run.suite import RUN_OPTIONS, SETTING_OPTIONS, TASK_OPTIONS, Flags
    from tasks.base import all_options

    def values(options) -> dict:
        return {o.name: o.from_flag(getattr(args, o.name, None)) for o in options}

    return Flags(suite=args.suite, task=args.task or DEFAULT_TASK, setting=values(SETTING_OPTIONS),
                 run=values(RUN_OPTIONS), params=values(TASK_OPTIONS),
                 task_options={name: getattr(args, name, None) for name in all_options()},
                 dry_run=args.dry_run, no_progress=args.no_progress,
                 verbose=bool(getattr(args, "verbose", False)), argv=list(getattr(args, "argv", [])))


def run_command(args: argparse.Namespace) -> int:
    from harness.run import dry_run, run_plan, runner, suite
    from harness.run.distributed import any_rank_failed, init_distributed, is_rank_zero

    _check_flags(args)
    if args.suite is None and args.model is None:
        args.suite = "quick"
    flags = _flags(args)
    if not flags.no_progress:
        heartbeat.start()  # signs of life in every phase over a few seconds, before any memory cap
    loaded = suite.load_suite(args.suite, flags) if args.suite is not None else suite.from_flags(flags)
    distributed = init_distributed()
    warn = run_plan.warner()
    plan = run_plan.build(loaded.settings, loaded.tasks, loaded.options, warn)
    if loaded.options.dry_run:
        dry_run.show(plan, loaded.options)
        return 0
    result = runner.run(plan, loaded.options, warn)
    exit_code = result.exit_code
    if distributed:  # every rank's shard is complete before rank 0 reports on all of them
        exit_code = 1 if any_rank_failed(exit_code) else 0
        if not is_rank_zero():
            return exit_code
        result.table = runner.folder_summary(loaded.options.out)
    _print_table(result, full=bool(getattr(args, "verbose", False)) or not loaded.options.report)
    out = loaded.options.out
    print(f"run folder: {out}")
    if not loaded.options.report:
        why = "--no-report" if args.report is False else "report = false in the suite"
        print(f"report: not rendered ({why}): rope-harness report {out}")
    elif result.table:
        _render_report(out, result.law)
    return exit_code


def _render_report(out: Path, law: dict | None = None) -> None:
    """<out>/report, with the run's law flags; a failing report leaves records and exit code as they are."""
    from harness.report import build_report

    try:
        with heartbeat.phase(f"rendering the report of {out}"):
            report = build_report([out], out / "report", law=law)
    except Exception as exc:  # noqa: BLE001 - the run is done; its report can be rendered again
        logging.getLogger("rope_harness").debug("report failed", exc_info=True)
        print(f"rope-harness: warning: the report failed ({one_line(exc)}): fix it and run "
              f"`rope-harness report {out}`", file=sys.stderr)
        return
    print(f"report: {report / 'report.html'} (also report.md, summary.csv, figures)")
    answer = report / "headline.txt"
    if answer.is_file() and answer.stat().st_size:
        answer = answer.read_text(encoding="utf-8")
        print("\nWhat was measured (the measured limit against Liu's law and the retrieval bound):")
        print(answer, end="")


def _print_table(result, full: bool = True) -> None:
    """The per-length table (with -v, or when no report follows; else it is the report's table.csv) and the
    counts line."""
    rows = result.table
    if not rows:
        print("no records")
        return
    if full:
        print(f"\n{'setting':<36} {'task':<11} {'length':>7} {'ok':>4} {'failed':>6}  value")
    for r in rows if full else []:
        value = "-" if r["value"] is None else f"{r['metric']} {r['value']:.4g}"
        print(f"{r['setting'][:36]:<36} {r['task']:<11} {r['length']:>7} {r['ok']:>4} "
              f"{r['failed']:>6}  {value}")
    failed = sum(r["failed"] for r in rows)
    retried = result.counts["retried"]
    print(f"{result.records} cells run now, {result.counts['skipped']} already recorded, "
          f"{failed} failed in total"
          + (f" ({retried} run again after an earlier failure)" if retried else "")
          + ("; rerun the same command to retry the failed cells" if result.retryable else "")
          + (f"\n{result.advice}" if result.advice else ""))


# ------------------------------------------------------------------------------------------------ zoo


def zoo_command(args: argparse.Namespace) -> int:
    from harness.model import zoo

    return zoo.train_command(args) if args.zoo_command == "train" else zoo.list_command()


def add_zoo_parser(sub) -> None:
    zoo = sub.add_parser("zoo", help="train or list the tiny base-modified model family")
    commands = zoo.add_subparsers(dest="zoo_command", required=True)
    train = commands.add_parser("train", help="pre-train + fine-tune the family (~15 min on 2 CPU cores)")
    train.add_argument("--out", type=Path, default=Path("zoo"),
                       help="output folder (default ./zoo; use the models with --model ./zoo/NAME). The "
                            "installed checkpoints (zoo:NAME) are replaced only when --out names their "
                            "folder, shown by `rope-harness zoo list`")
    train.add_argument("--tiny", action="store_true",
                       help="a seconds-long smoke recipe (tiny sizes, few steps)")
    train.add_argument("--steps", type=int, help="pre-training steps")
    train.add_argument("--tune-steps", type=int, help="fine-tuning steps per base")
    train.add_argument("--seed", type=int, help="random seed")
    train.set_defaults(func=zoo_command)
    listing = commands.add_parser("list",
                                  help="the zoo names, their RoPE base and law inputs, and where they are")
    listing.set_defaults(func=zoo_command)


# ------------------------------------------------------------------------------------------------ report


def report_command(args: argparse.Namespace) -> int:
    from harness.report import command

    for run_dir in args.run_dirs:  # `--factor 1.5 2 RUN` (the old form) makes "2" a run folder
        if not run_dir.exists() and token_like(str(run_dir)):
            raise InputError(f"run folder {str(run_dir)!r} does not exist and looks like a number: give "
                             "several values as --factor 1.5,2 (or --factor 1.5 --factor 2), then the run "
                             "folders")
    return command(args)


def token_like(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def add_report_parser(sub) -> None:
    from harness.report.base import (  # pandas-free: the analysis stays unloaded
        DEFAULT_BOOTSTRAP,
        DEFAULT_CI,
        DEFAULT_MIN_SAMPLES,
    )

    parser = sub.add_parser(
        "report", help="figures and tables from run folders, with the law's predicted limit on every curve",
        description="Load records*.jsonl of one or more runs and write report.md, report.html "
                    "(self-contained), summary.csv, table.csv and PNG figures.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders to compare")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default <first run>/report)")
    parser.add_argument("--factor", type=float_list, action="extend", default=None, metavar="F[,F...]",
                        help="relative measured-length rules: how many times worse than the best (default "
                             "per task; ppl@L: 1.5); several (--factor 1.5,2 or --factor 1.5 --factor 2) "
                             "give one summary row each")
    parser.add_argument("--delta", type=float_list, action="extend", default=None, metavar="NATS[,NATS...]",
                        help="additive measured-length rules: how many nats worse than the reference "
                             "(default per definition; per-position loss: 0.5, passkey answer log-prob: 2); "
                             "several (--delta 0.5,1 or repeated) give one summary row each")
    parser.add_argument("--threshold", type=float_list, action="extend", default=None, metavar="T[,T...]",
                        help="RULER's effective length: the score it must stay at or above (default RULER's "
                             "85.6); a value above 1 is a percentage (85.6), one up to 1 a fraction of the "
                             "0-1 score (0.856); several give one summary row each. Other tasks' thresholds "
                             "(passkey accuracy 0.5) stay as they are")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help=f"bootstrap resamples for CIs (default {DEFAULT_BOOTSTRAP}; 0 = no CI)")
    parser.add_argument("--ci", type=float, default=DEFAULT_CI, help=f"CI level (default {DEFAULT_CI:g})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    for flag, what in (("--pretrain-base", "pre-training base b0"), ("--train-len", "pre-training length"),
                       ("--tune-len", "fine-tuning length")):
        parser.add_argument(flag, type=law_override, action="append", default=None, metavar="[LABEL=]VALUE",
                            help=f"law input: the {what} of every setting, or of one (LABEL=VALUE, "
                                 "repeatable); no rerun: the law's inputs change no measured number")
    parser.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES, metavar="N",
                        help="samples per length a measured length needs to count as evidence (default "
                             f"{DEFAULT_MIN_SAMPLES}); with fewer it is listed as insufficient, never drawn")
    parser.add_argument("--task", action="append", default=None, metavar="NAME",
                        help="only these tasks (repeatable)")
    parser.set_defaults(func=report_command)


# ------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rope-harness", description="Long-context evaluation of RoPE models, "
                    "with the RoPE extrapolation scaling law drawn on every curve.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"rope-harness {__version__}")
    sub = parser.add_subparsers(dest="command")
    add_law_parser(sub)
    add_run_parser(sub)
    add_report_parser(sub)
    add_zoo_parser(sub)
    parser.commands = dict(sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:  # `rope-harness run` (no further arguments) is the default job: the quick suite on the zoo
        parser.print_help()
        return 0
    try:
        try:
            args = parser.parse_args(argv)
        # argparse's usage error (one line, see Parser), --help, --version: a code to return
        except SystemExit as exc:
            return int(exc.code or 0)
        if args.verbose:  # only then: a root handler would print every library warning a second time
            logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
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

