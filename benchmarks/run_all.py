"""Run every benchmark one after another (never concurrently) and print the combined report.

    python benchmarks/run_all.py [--out benchmarks/RESULTS.md] [--skip gpu,...]

Each script runs as its own process on one shared benchmark model; their outputs are printed in turn,
then a summary of every target line ("Target ... -> holds | MISSED"). Exit status 0 when every target
holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_common as bc

HERE = Path(__file__).resolve().parent
SCRIPTS = ["exactness", "memory", "speed", "gpu"]
REPRODUCE = "python benchmarks/run_all.py --out benchmarks/RESULTS.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the combined report (markdown) here")
    parser.add_argument("--skip", default="", help="comma-separated scripts to skip: " + ",".join(SCRIPTS))
    args = parser.parse_args()
    skip = {s for s in args.skip.split(",") if s}

    started = time.perf_counter()
    parts = ["# rope-harness benchmarks", "",
             f"Reproduce: `{REPRODUCE}` (CPU part: ~45 minutes on 2 quiet cores, most of it the strategy "
             "table's 64K cells).",
             f"Load average (1/5/15 min) at start of the suite: {bc.load_now()}.", ""]
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bc.build_model(Path(tmp) / "model")
        for name in SCRIPTS:
            if name in skip:
                continue
            command = [sys.executable, str(HERE / f"{name}.py")] + (
                [] if name == "gpu" else ["--model-dir", str(model_dir)])
            print(f"running {name} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
            output = proc.stdout.rstrip()
            print(output, flush=True)
            parts += [output, "", f"_{name}.py: {time.perf_counter() - t0:.0f} s, exit {proc.returncode}_",
                      ""]
            if proc.returncode != 0:
                failed.append(f"{name}.py exited {proc.returncode}")

    targets = [line.strip() for part in parts for line in part.splitlines()
               if line.strip().startswith("Target")]
    summary = ["## Summary of targets", ""] + [f"- {t}" for t in targets] + [f"- {f}" for f in failed]
    summary += ["", f"Suite wall time {time.perf_counter() - started:.0f} s; "
                    f"load average at end: {bc.load_now()}."]
    print("\n" + "\n".join(summary))
    if args.out:
        args.out.write_text("\n".join(parts + summary) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if not failed and all("-> holds" in t for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
