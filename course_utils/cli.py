"""The `course` command: doctor, data, run, lab, and for instructors exercises, grade, release.

    course doctor              is everything in place? (exit 0 only when the course can run)
    course data                find, verify or fetch Fashion-MNIST
    course run [NOTEBOOK ...]  execute notebooks headless, write HTML into build/, print times
    course lab                 open JupyterLab on the course
    course exercises build     regenerate exercises/ from solutions/ (otter assign)
    course exercises check     fail if an exercise is stale or contains solution code
    course grade SUBMISSION... grade handed-in notebooks offline: gradebook.csv and feedback
    course grade --gradescope ASSIGNMENT   write a Gradescope autograder zip instead
    course release OUTDIR      write the student edition: no solutions, no hidden tests

The last three are instructor tools (course_utils/grading/); the student edition has the others.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

MIN_PYTHON = (3, 10)


def cmd_doctor(args) -> int:
    problems = []
    print("course doctor\n")
    if sys.version_info < MIN_PYTHON:
        problems.append(f"Python {sys.version.split()[0]} is too old: the course needs 3.10 or newer.")
    try:
        from .report import environment_report
        report = environment_report()
    except ImportError as err:
        print(f"cannot import the course's dependencies: {err}")
        print("Fix: make setup   (or: pip install -e .)")
        return 1
    width = max(map(len, report))
    for key, value in report.items():
        print(f"  {key:>{width}} : {value}")
    print()
    from .data import DatasetError, load_fashion_mnist
    try:
        data = load_fashion_mnist(download=False)
        print(f"  Fashion-MNIST verified: {len(data.train_images)} training and "
              f"{len(data.test_images)} test images in {data.folder}")
    except DatasetError as err:
        problems.append(str(err))
    try:
        import ipykernel  # noqa: F401
        import jupyterlab  # noqa: F401
        import nbclient  # noqa: F401
    except ImportError as err:
        problems.append(f"Jupyter is missing ({err}). Fix: make setup   (or: pip install -e .)")
    if problems:
        print("\nProblems:")
        for p in problems:
            print("  - " + p.replace("\n", "\n    "))
        return 1
    print("\nAll good: the course can run.")
    return 0


def cmd_data(args) -> int:
    from .data import DatasetError, copy_to_cache, find_fashion_mnist, load_fashion_mnist
    try:
        data = load_fashion_mnist(args.dir, download=not args.no_download)
    except DatasetError as err:
        print(err, file=sys.stderr)
        return 1
    if args.copy_to_cache:
        target = copy_to_cache(find_fashion_mnist(args.dir))
        print(f"copied into {target}")
    print(f"Fashion-MNIST ready in {data.folder}: {len(data.train_images)} training and "
          f"{len(data.test_images)} test images, checksums verified.")
    return 0


def cmd_run(args) -> int:
    from .notebooks import course_notebooks, run_notebooks
    paths = [Path(p) for p in args.notebooks] or course_notebooks()
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"No such notebook: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    if not paths:
        print("No notebooks found in notebooks/.", file=sys.stderr)
        return 2
    results = run_notebooks(paths, Path(args.output), timeout=args.timeout)
    failed = [r for r in results if r.status != "ok"]
    print(f"\nHTML copies in {Path(args.output).resolve()}")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(r.notebook.name for r in failed)}",
              file=sys.stderr)
        return 1
    return 0


def cmd_exercises(args) -> int:
    from .grading import GradingError, build_exercises, check_exercises
    try:
        if args.action == "build":
            for path in build_exercises(run_tests=not args.no_run_tests):
                print(f"wrote {path}")
            return 0
        problems = check_exercises()
    except GradingError as err:
        print(err, file=sys.stderr)
        return 1
    if problems:
        print("Exercise problems:", *problems, sep="\n  - ", file=sys.stderr)
        return 1
    print("Exercises are up to date with solutions/ and contain no solution code.")
    return 0


def cmd_grade(args) -> int:
    from .grading import GradingError, grade
    if args.gradescope:
        return cmd_gradescope(args)
    if not args.submissions:
        print("course grade: give the submissions (notebooks or folders of them), "
              "or --gradescope ASSIGNMENT to build a Gradescope autograder.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        results = grade(args.submissions, args.output or "grades", timeout=args.timeout,
                        memory_gb=args.memory_gb, assignment=args.assignment, jobs=args.jobs,
                        regrade=args.regrade)
    except GradingError as err:
        print(err, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: the submissions that finished are saved in {Path(args.output or 'grades').resolve()}; "
              "run the same command again to grade the rest", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - started
    counts = {s: sum(r.status == s for r in results) for s in ("graded", "timeout", "invalid", "error")}
    provisional = sum(r.provisional for r in results)
    print(f"\n{len(results)} submission(s) in {seconds:.1f} s ({len(results) / seconds:.2f} per second): " +
          ", ".join(f"{n} {s}" for s, n in counts.items() if n) +
          (f"; {provisional} provisional (flagged for review)" if provisional else ""))
    print(f"gradebook: {Path(args.output or 'grades').resolve() / 'gradebook.csv'}")
    print(f"feedback:  {Path(args.output or 'grades').resolve() / 'feedback'}/")
    return 0


def cmd_gradescope(args) -> int:
    from .grading import GradingError
    from .grading.gradescope import build_gradescope_zip
    try:
        path = build_gradescope_zip(args.gradescope, Path(args.output or "gradescope"), timeout=args.timeout,
                                    memory_gb=args.memory_gb)
    except GradingError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"wrote {path}\nUpload it as the assignment's autograder (Gradescope: Configure Autograder "
          "-> Zip file upload); students submit their .ipynb file.")
    return 0


def cmd_release(args) -> int:
    from .grading import GradingError
    from .grading.release import release
    try:
        path = release(Path(args.output), check=not args.no_check)
    except GradingError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"wrote the student edition to {path}: lessons, exercises, course_utils without grading, "
          "no solutions and no hidden tests (searched for every answer line).")
    return 0


def cmd_lab(args) -> int:
    from .notebooks import REPO_ROOT
    command = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={REPO_ROOT}"] + args.extra
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in command:
        command.append("--allow-root")
    return subprocess.call(command)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="course", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("doctor", help="check versions, device and dataset").set_defaults(func=cmd_doctor)

    data = sub.add_parser("data", help="find, verify or download Fashion-MNIST")
    data.add_argument("--dir", default=None, help="a folder to look in first (and download into)")
    data.add_argument("--no-download", action="store_true", help="fail rather than download")
    data.add_argument("--copy-to-cache", action="store_true",
                      help="copy the verified files into the user cache")
    data.set_defaults(func=cmd_data)

    run = sub.add_parser("run", help="execute notebooks headless and write HTML")
    run.add_argument("notebooks", nargs="*", help="notebooks to run (default: all lessons)")
    run.add_argument("-o", "--output", default="build", help="folder for the HTML (default: build)")
    run.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    run.set_defaults(func=cmd_run)

    if instructor_tools():
        add_instructor_commands(sub)

    lab = sub.add_parser("lab", help="open JupyterLab on the course")
    lab.add_argument("extra", nargs=argparse.REMAINDER, help="options passed to jupyter lab")
    lab.set_defaults(func=cmd_lab)

    args = parser.parse_args(argv)
    return args.func(args)


def instructor_tools() -> bool:
    """Whether this is the instructor's repository (the student edition has no grading package)."""
    import importlib.util
    return importlib.util.find_spec("course_utils.grading") is not None


def add_instructor_commands(sub) -> None:
    exercises = sub.add_parser("exercises", help="build exercises/ from solutions/, or check them")
    exercises.add_argument("action", choices=["build", "check"])
    exercises.add_argument("--no-run-tests", action="store_true",
                           help="build without running each solution against its tests")
    exercises.set_defaults(func=cmd_exercises)

    grade = sub.add_parser("grade", help="grade handed-in notebooks offline, each in a sandbox")
    grade.add_argument("submissions", nargs="*", help="notebooks, or folders of notebooks")
    grade.add_argument("-o", "--output", default=None,
                       help="folder for gradebook.csv and feedback/ (default: grades), or for the "
                            "Gradescope zip (default: gradescope)")
    grade.add_argument("--gradescope", metavar="ASSIGNMENT", default=None,
                       help="instead of grading, write a Gradescope autograder zip for this "
                            "assignment (a name like 03_regularization, or its solution notebook)")
    grade.add_argument("--timeout", type=float, default=600, help="seconds per submission (default 600)")
    grade.add_argument("--memory-gb", type=float, default=8, help="memory limit per submission (default 8)")
    grade.add_argument("--assignment", default=None,
                       help="assignment name, when a submission lost its metadata")
    grade.add_argument("--jobs", type=int, default=None,
                       help="submissions graded at once (default: one per CPU core)")
    grade.add_argument("--regrade", action="store_true",
                       help="grade every submission again; without it a rerun keeps the results "
                            "saved in OUTPUT/results.json whose notebook, solutions and settings "
                            "are unchanged, so an interrupted batch resumes")
    grade.set_defaults(func=cmd_grade)

    release = sub.add_parser("release", help="write the student edition (no solutions, no hidden tests)")
    release.add_argument("output", help="a new folder for the student edition")
    release.add_argument("--no-check", action="store_true",
                         help="skip checking that exercises/ is current (the leak search still runs)")
    release.set_defaults(func=cmd_release)


if __name__ == "__main__":
    sys.exit(main())
