"""The dry run's time estimate against the `real` suite's measured wall time, per setting and task.

Measured: the committed records of results/real-reference/ (SmolLM2-135M, 10 settings, 2 CPU cores), each
record's gap to the one before it attributed to its (setting, task); gaps over 20 minutes (pauses between
sessions) left out. Estimated: what `rope-harness run real --dry-run` prints for a fresh folder on this
machine (harness.factory.planner: the planner's FLOPs over this machine's cached calibration).

    python benchmarks/estimate_check.py            # the table for benchmarks/RESULTS.md
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAUSE = 1200.0  # seconds: a longer gap between two records is a pause, not work


def measured(records: Path) -> dict[tuple[str, str], float]:
    rows = sorted((json.loads(line) for line in records.open()), key=lambda r: r["recorded_at"])
    spans: dict[tuple[str, str], float] = defaultdict(float)
    for before, row in zip(rows, rows[1:], strict=False):
        gap = row["recorded_at"] - before["recorded_at"]
        if gap < PAUSE:
            spans[row["setting"], row["task"]] += gap
    return spans


def estimated() -> dict[tuple[str, str], float | None]:
    from harness import factory
    from harness.run import run_plan
    from harness.run.dry_run import _seconds
    from harness.run.suite import Flags, load_suite

    with tempfile.TemporaryDirectory() as out:
        loaded = load_suite("real", Flags(dry_run=True, no_progress=True, run={"out": out}))
        plan = run_plan.build(loaded.settings, loaded.tasks, loaded.options, lambda message: None)
        times = {}
        for prep in plan.settings:
            planner = factory.planner(prep.setting, prep.config, loaded.options)
            for task_plan in prep.tasks.values():
                times[prep.label, task_plan.name] = _seconds(planner, task_plan, list(task_plan.cells))
    return times


def main() -> int:
    spans, guesses = measured(ROOT / "results/real-reference/records.jsonl"), estimated()
    print("| setting | task | measured | estimated | estimated / measured |\n|---|---|---|---|---|")
    for key, seconds in spans.items():
        guess = guesses.get(key)
        ratio = f"{guess / seconds:.2f}" if guess else "-"
        print(f"| {key[0]} | {key[1]} | {seconds / 60:.0f} min | "
              f"{'-' if guess is None else f'{guess / 60:.0f} min'} | {ratio} |")
    total, guess = sum(spans.values()), sum(v for k, v in guesses.items() if k in spans and v)
    print(f"| all | | {total / 3600:.1f} h | {guess / 3600:.1f} h | {guess / total:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
