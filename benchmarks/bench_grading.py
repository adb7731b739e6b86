"""Benchmark: `course grade` on a class-sized batch, one job against several, in one process.

Builds 20 submissions of lesson 03's exercise (10 filled in from the solution, 10 untouched),
grades them with --jobs 1 (the baseline) and then with --jobs N (default: one per core), each
into a fresh output folder, checks both gradebooks agree, and prints submissions per second and
the speed-up, then a final JSON line.

    python benchmarks/bench_grading.py               # --jobs 1 against --jobs <cores>
    python benchmarks/bench_grading.py --count 4     # a quick run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_utils.grading import EXERCISES_DIR, SOLUTIONS_DIR, build_autograder, grade  # noqa: E402

ASSIGNMENT = "03_regularization"


def make_submissions(folder: Path, count: int) -> None:
    filled = build_autograder(SOLUTIONS_DIR / f"{ASSIGNMENT}.ipynb").filled_notebook
    untouched = json.loads((EXERCISES_DIR / f"{ASSIGNMENT}.ipynb").read_text(encoding="utf-8"))
    for i in range(count):
        nb = filled if i % 2 == 0 else untouched
        (folder / f"student{i:02d}_{'correct' if i % 2 == 0 else 'untouched'}.ipynb").write_text(json.dumps(nb))


def timed_grade(folder: Path, output: Path, jobs: int) -> tuple[float, dict]:
    started = time.perf_counter()
    grade([folder], output, jobs=jobs, echo=lambda *a, **k: None)
    seconds = time.perf_counter() - started
    rows = {r["student"]: (r["total"], r["status"]) for r in csv.DictReader((output / "gradebook.csv").open())}
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="submissions, half correct (default 20)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel jobs to compare with 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
        tmp = Path(tmp)
        (tmp / "subs").mkdir()
        make_submissions(tmp / "subs", args.count)
        base_seconds, base_rows = timed_grade(tmp / "subs", tmp / "one", 1)
        par_seconds, par_rows = timed_grade(tmp / "subs", tmp / "many", args.jobs)
    if base_rows != par_rows:
        sys.exit(f"the gradebooks differ between --jobs 1 and --jobs {args.jobs}: {base_rows} {par_rows}")
    correct = sorted({total for name, (total, _) in base_rows.items() if "correct" in name})
    untouched = sorted({total for name, (total, _) in base_rows.items() if "untouched" in name})
    print(f"{args.count} submissions of {ASSIGNMENT} (correct ones scored {correct}, untouched {untouched})")
    print(f"  --jobs 1:  {base_seconds:6.1f} s  {args.count / base_seconds:.2f} submissions/s")
    print(f"  --jobs {args.jobs}:  {par_seconds:6.1f} s  {args.count / par_seconds:.2f} submissions/s")
    print(f"  speed-up: {base_seconds / par_seconds:.2f}x")
    print(json.dumps({"count": args.count, "jobs": args.jobs, "seconds_jobs_1": round(base_seconds, 1),
                      f"seconds_jobs_{args.jobs}": round(par_seconds, 1),
                      "speedup": round(base_seconds / par_seconds, 2)}))


if __name__ == "__main__":
    main()
