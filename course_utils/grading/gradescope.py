"""Grading on Gradescope: `course grade --gradescope ASSIGNMENT` writes an autograder zip that runs
the same sandboxed grading (sandbox, judge, plain data) inside Gradescope's container.

The zip holds:
- `setup.sh`, which Gradescope runs once when it builds the container: Python, bubblewrap, a venv
  with this package and its dependencies, and Fashion-MNIST (downloaded into /autograder/data);
- `run_autograder`, which Gradescope runs for each submission: it calls `run()` below;
- `package/`, this course_utils (grading included) with its pyproject.toml, installed by setup.sh;
- `assignment.json`, the assignment as the judge needs it: its tests, public and hidden, and
  points. It stays in /autograder/source, which the sandbox cannot see.

`run()` grades the one notebook in /autograder/submission and writes
/autograder/results/results.json (atomically) in Gradescope's format: a score, one entry per
question, and the student's feedback as Markdown. Where the container cannot make namespaces
(Docker's default seccomp profile refuses them), the grader's log says so (Gradescope shows it to
instructors only), and the sandbox falls back to a user id of its own: /autograder/source and
/autograder/results are readable by root alone, so a process that slipped past the audit hooks
can neither read the tests nor write the results, and every process of that user is killed when
grading ends. The score is decided by the judge, outside the submission's process, either way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from ..files import write_text_atomic
from .assignments import REPO_ROOT, SOLUTIONS_DIR, Autograder, GradingError, build_autograder, solution_notebooks

SETUP_SH = """\
#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's container.
set -euo pipefail
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip bubblewrap >/dev/null
python3 -m venv /autograder/venv
/autograder/venv/bin/pip install --quiet --upgrade pip
/autograder/venv/bin/pip install --quiet torch torchvision     # (a CPU-only build makes a smaller image)
/autograder/venv/bin/pip install --quiet /autograder/source/package
mkdir -p /autograder/data
/autograder/venv/bin/course data --dir /autograder/data
"""

RUN_AUTOGRADER = """\
#!/usr/bin/env bash
# Gradescope runs this for each submission: grade /autograder/submission/*.ipynb in a sandbox
# and write /autograder/results/results.json. (AUTOGRADER_ROOT and COURSE_PYTHON are for testing.)
set -euo pipefail
root="${AUTOGRADER_ROOT:-/autograder}"
export COURSE_DATA_DIR="${COURSE_DATA_DIR:-$root/data}"
exec "${COURSE_PYTHON:-$root/venv/bin/python}" -m course_utils.grading.gradescope run --root "$root" \\
    --timeout __TIMEOUT__ --memory-gb __MEMORY_GB__
"""

PACKAGE_FILES = ("course_utils", "pyproject.toml", "README.md")


def _find_solution(assignment: str, solutions: Path) -> Path:
    candidate = Path(assignment)
    if candidate.suffix == ".ipynb" and candidate.is_file():
        return candidate
    known = solution_notebooks(solutions)
    for path in known:
        if path.stem == assignment or path.name.split("_")[0] == assignment:
            return path
    raise GradingError(f"no assignment {assignment!r}: give a solution notebook or one of "
                       f"{', '.join(p.stem for p in known)}")


def build_gradescope_zip(assignment: str, output: Path, solutions: Path = SOLUTIONS_DIR,
                         timeout: float = 600, memory_gb: float = 8) -> Path:
    """Write OUTPUT/<assignment>-gradescope.zip (atomically) and return its path."""
    grader = build_autograder(_find_solution(assignment, solutions))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"{grader.name}-gradescope.zip"
    spec = {"name": grader.name, "tests": grader.tests, "points": grader.points, "manual": grader.manual}
    handle, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=output)
    os.close(handle)
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            def add_text(name: str, text: str, mode: int = 0o644) -> None:
                info = zipfile.ZipInfo(name)
                info.external_attr = (0o100000 | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, text)

            add_text("setup.sh", SETUP_SH, 0o755)
            add_text("run_autograder", RUN_AUTOGRADER.replace("__TIMEOUT__", f"{timeout:g}")
                     .replace("__MEMORY_GB__", f"{memory_gb:g}"), 0o755)
            add_text("assignment.json", json.dumps(spec, indent=1))
            for name in PACKAGE_FILES:
                source = REPO_ROOT / name
                files = [source] if source.is_file() else sorted(
                    p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
                for path in files:
                    zf.write(path, f"package/{path.relative_to(REPO_ROOT)}")
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return target


def results_json(result) -> dict:
    """A GradeResult in Gradescope's results.json format."""
    from .batch import feedback_text

    tests = []
    for question, outcome in result.details.get("questions", {}).items():
        lines = []
        for test in outcome.get("tests", []):
            kind = "hidden test" if test["hidden"] else f"public test {test['name']}"
            lines.append(f"{kind}: {'passed' if test['passed'] else 'failed'}")
            if not test["hidden"] and not test["passed"]:
                lines.append(test["message"].replace("❌ Test case failed", "").strip()[-400:])
        if outcome.get("error"):
            lines.append(f"the tests could not run: {outcome['error']}")
        tests.append({"name": question, "score": float(outcome["score"]), "max_score": float(outcome["possible"]),
                      "output": "\n".join(lines), "visibility": "visible"})
    if not tests:     # not graded at all (invalid notebook, time limit, broken sandbox)
        points = result.details.get("points", {})
        tests = [{"name": question, "score": 0.0, "max_score": float(points[question]), "output": "",
                  "visibility": "visible"} for question in sorted(points)]
    return {"score": result.total, "output": feedback_text(result), "output_format": "md", "tests": tests,
            "stdout_visibility": "hidden"}


def run(root: Path, timeout: float = 600, memory_gb: float = 8, echo=print) -> dict:
    """Grade the notebook in ROOT/submission with ROOT/source/assignment.json; write and return
    ROOT/results/results.json."""
    from .batch import GradeResult, grade

    root = Path(root).resolve()
    spec = json.loads((root / "source" / "assignment.json").read_text(encoding="utf-8"))
    grader = Autograder(name=spec["name"], solution=root / "source" / "assignment.json", student_notebook={},
                        filled_notebook={}, tests=spec["tests"], points=spec["points"], manual=spec["manual"])
    notebooks = sorted((root / "submission").rglob("*.ipynb"))
    notebooks = [p for p in notebooks if ".ipynb_checkpoints" not in p.parts]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        for private in (root / "source", root / "results"):   # a sandbox's own user cannot read them
            private.mkdir(parents=True, exist_ok=True)
            private.chmod(0o700)
    if len(notebooks) == 1:
        with tempfile.TemporaryDirectory(prefix="gradescope-") as scratch:
            [result] = grade(notebooks, Path(scratch) / "grades", timeout=timeout, memory_gb=memory_gb,
                             assignment=grader.name, autograders={grader.name: grader}, jobs=1,
                             hide=[root / "source", root / "results"], echo=echo)
    else:
        found = ", ".join(p.name for p in notebooks) or "none"
        result = GradeResult(student="submission", submission=root / "submission", assignment=grader.name,
                             status="invalid", possible=sum(grader.points.values()),
                             scores={q: 0.0 for q in sorted(grader.tests)},
                             notes=[f"hand in exactly one .ipynb file (found: {found})"])
    result.details.setdefault("points", grader.points)
    if result.details.get("judge_log"):     # Gradescope's log: instructors see it, students do not
        echo("the judge gave no report; its log:\n" + result.details["judge_log"])
    results = results_json(result)
    write_text_atomic(root / "results" / "results.json", json.dumps(results, indent=1))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Gradescope's run_autograder step")
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="grade ROOT/submission/*.ipynb into ROOT/results/results.json")
    go.add_argument("--root", default="/autograder")
    go.add_argument("--timeout", type=float, default=600)
    go.add_argument("--memory-gb", type=float, default=8)
    args = parser.parse_args(argv)
    results = run(Path(args.root), timeout=args.timeout, memory_gb=args.memory_gb)
    print(f"score {results['score']:g}; results in {Path(args.root) / 'results' / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
