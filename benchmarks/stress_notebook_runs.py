"""Stress test: execute a notebook many times in a row, the way `course run` does, and count stalls.

A stall is a cell that ran past its time limit. On a busy machine, PyTorch's CPU threads spinning
while they wait for each other made a 10-second training cell take minutes in a Jupyter kernel
(course_utils/cpu_threads.py explains it); nbclient then shut the kernel down under the running
cell, whose reply failed with "ZMQError: Socket operation on non-socket". With that fixed, a
second cause showed: a reply that had arrived but whose wake-up the client missed, read only when
the cell limit ran out (course_utils/notebooks.py now wakes every second). This script found both
and proves the fixes. By default lesson 00 runs 30 times, each cell limited to 120 s, while a
low-priority busy loop keeps one core occupied (the "busy laptop").

    python benchmarks/stress_notebook_runs.py                      # 30 runs of lesson 00, under load
    python benchmarks/stress_notebook_runs.py --without-fix --stop-at-first-stall   # the old behaviour
    python benchmarks/stress_notebook_runs.py --runs 10 --no-load

Prints one line per run, then a summary and a final JSON line; exits 1 if any run stalled or
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from course_utils.notebooks import run_notebook  # noqa: E402

BUSY_LOOP = "import os\nos.nice(19)\nwhile True:\n    pass\n"


@contextlib.contextmanager
def busy_core(enabled: bool):
    """A low-priority process that spins on one core for as long as the block runs."""
    if not enabled:
        yield None
        return
    spinner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        yield spinner
    finally:
        spinner.kill()
        spinner.wait()


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("ipykernel", "jupyter-client", "nbclient", "pyzmq",
                                             "tornado", "ipywidgets")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", nargs="?", default=str(REPO / "notebooks" / "00_setup_and_tour.ipynb"))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cell-timeout", type=int, default=120, help="seconds allowed per cell")
    parser.add_argument("--no-load", action="store_true", help="no busy process beside the runs")
    parser.add_argument("--stop-at-first-stall", action="store_true")
    parser.add_argument("--without-fix", action="store_true",
                        help="kernels spin as long as GNU OpenMP does by default (the old behaviour)")
    args = parser.parse_args(argv)
    if args.without_fix:
        os.environ["GOMP_SPINCOUNT"] = "300000"  # libgomp's own default

    print("versions:", ", ".join(f"{k} {v}" for k, v in versions().items()),
          f"| GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}", flush=True)
    print(f"{args.runs} runs of {Path(args.notebook).name}, cell limit {args.cell_timeout} s, "
          f"{'no load' if args.no_load else 'one core kept busy by a nice-19 loop'}", flush=True)
    results = []
    with busy_core(not args.no_load), tempfile.TemporaryDirectory(prefix="stress-") as out:
        for k in range(1, args.runs + 1):
            result = run_notebook(Path(args.notebook), Path(out), timeout=args.cell_timeout)
            status = "stalled" if result.stalled else result.status
            results.append({"run": k, "status": status, "seconds": round(result.seconds, 1),
                            "error": result.error})
            print(f"run {k:3d}/{args.runs}: {status:<7} {result.seconds:7.1f} s"
                  + (f"  {result.error}" if result.error else ""), flush=True)
            if result.stalled and args.stop_at_first_stall:
                break
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "stalled", "failed")}
    seconds = sorted(r["seconds"] for r in results if r["status"] == "ok")
    median = seconds[len(seconds) // 2] if seconds else None
    print(f"\n{len(results)} runs: {counts['ok']} ok, {counts['stalled']} stalled, "
          f"{counts['failed']} failed; median run {median} s", flush=True)
    print(json.dumps({"notebook": Path(args.notebook).name, "runs": len(results), **counts,
                      "median_seconds": median, "cell_timeout": args.cell_timeout,
                      "load": not args.no_load, "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
                      "versions": versions(), "pid": os.getpid(),
                      "finished": time.strftime("%Y-%m-%d %H:%M:%S")}))
    return 0 if counts["ok"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
