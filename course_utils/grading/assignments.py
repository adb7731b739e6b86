"""Exercises from solutions: solutions/NN_*.ipynb are master notebooks in otter-grader's assignment
format; `course exercises build` runs `otter assign` on each and writes the student version to
exercises/, refusing any that would leak an answer or a hidden test.

The test cells of a master notebook are otter's exception-based tests (`def test_...(names)`),
public or `# HIDDEN`. When grading, they run in the judge (judge.py), outside the student's
process: see that module for what a test may and may not do with the student's objects.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_text_atomic
REPO_ROOT = Path(__file__).resolve().parents[2]   # (not from ..notebooks: the sandbox must not import nbclient)

SOLUTIONS_DIR = REPO_ROOT / "solutions"
EXERCISES_DIR = REPO_ROOT / "exercises"
DELIMITERS = ("# ASSIGNMENT CONFIG", "# BEGIN QUESTION", "# END QUESTION", "# BEGIN SOLUTION",
              "# END SOLUTION", "# BEGIN TESTS", "# END TESTS", "# BEGIN PROMPT", "# END PROMPT")


class GradingError(RuntimeError):
    """The assignment itself (not a student's submission) is broken; the message says how."""


@dataclass
class Autograder:
    """What `otter assign` makes of one solution notebook."""

    name: str                   # the assignment name (ASSIGNMENT CONFIG `name:`)
    solution: Path
    student_notebook: dict      # the exercise, as JSON
    filled_notebook: dict       # the exercise with the reference answers in it
    tests: dict[str, str]       # question -> otter test file (public and hidden cases)
    points: dict[str, float]    # question -> points
    manual: list[str] = field(default_factory=list)  # questions graded by a person


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def assignment_name(solution_nb: dict, path: Path | None = None) -> str:
    for cell in solution_nb.get("cells", []):
        if cell.get("cell_type") == "raw" and _source(cell).lstrip().startswith("# ASSIGNMENT CONFIG"):
            match = re.search(r"^name:\s*(\S+)", _source(cell), re.M)
            if match:
                return match.group(1).strip("'\"")
    raise GradingError(f"{path or 'The solution notebook'} has no '# ASSIGNMENT CONFIG' raw cell "
                       "with a 'name:' line; add one as the notebook's first cell.")


def misplaced_delimiters(solution_nb: dict) -> list[str]:
    """Delimiters that sit in code or markdown cells. otter only honours them in raw cells, and
    a '# BEGIN SOLUTION' in a code cell makes it ship the whole solution to students, silently."""
    problems = []
    for number, cell in enumerate(solution_nb.get("cells", []), start=1):
        if cell.get("cell_type") == "raw":
            continue
        first = _source(cell).strip().splitlines()[0].strip() if _source(cell).strip() else ""
        if any(first.startswith(d) for d in DELIMITERS) and not first.startswith("# BEGIN SOLUTION NO PROMPT"):
            if cell.get("cell_type") == "code" and first.startswith(("# BEGIN SOLUTION", "# END SOLUTION")):
                # in-code markers are fine *inside* a solution block; a cell made only of the
                # marker is the mistake
                if len(_source(cell).strip().splitlines()) > 1:
                    continue
            problems.append(f"cell {number} is a {cell.get('cell_type')} cell starting with "
                            f"'{first}'; make it a raw cell")
    return problems


def _deterministic_ids(nb: dict, prefix: str) -> dict:
    for i, cell in enumerate(nb.get("cells", [])):
        cell["id"] = f"{prefix[:40]}-{i}"
        if cell.get("cell_type") == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
    return nb


_BUILT: dict[tuple, Autograder] = {}   # (path, content, run_tests) -> what otter assign made of it


def build_autograder(solution: Path, run_tests: bool = False, workdir: Path | None = None) -> Autograder:
    """Run `otter assign` on a solution notebook in a scratch folder (inside `workdir` if given:
    the grader passes its own, which no sandbox can see) and collect what it makes (once per
    content of the notebook in this process: a batch, a release and the tests reuse it)."""
    solution = Path(solution).resolve()
    key = (str(solution), hashlib.sha256(solution.read_bytes()).hexdigest(), run_tests)
    if key not in _BUILT:
        _BUILT[key] = _build_autograder(solution, run_tests, workdir)
    return copy.deepcopy(_BUILT[key])


def _build_autograder(solution: Path, run_tests: bool, workdir: Path | None) -> Autograder:
    solution_nb = json.loads(solution.read_text(encoding="utf-8"))
    name = assignment_name(solution_nb, solution)
    problems = misplaced_delimiters(solution_nb)
    if problems:
        raise GradingError(f"{solution.name}: " + "; ".join(problems))
    with tempfile.TemporaryDirectory(prefix="course-assign-", dir=workdir) as tmp:
        out = Path(tmp) / "dist"
        command = [sys.executable, "-m", "otter", "assign", str(solution), str(out)]
        if not run_tests:
            command.append("--no-run-tests")
        done = subprocess.run(command, capture_output=True, text=True, cwd=tmp,
                              env={**os.environ, "COURSE_HEADLESS": "1", "MPLBACKEND": "Agg"})
        if done.returncode != 0:
            raise GradingError(f"otter assign failed on {solution.name}:\n{done.stdout[-2000:]}\n"
                               f"{done.stderr[-3000:]}")
        student = json.loads((out / "student" / solution.name).read_text(encoding="utf-8"))
        filled = json.loads((out / "autograder" / solution.name).read_text(encoding="utf-8"))
        tests = {}
        for archive in (out / "autograder").glob("*.zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if member.startswith("tests/") and member.endswith(".py"):
                        tests[Path(member).stem] = zf.read(member).decode()
    if not tests:
        raise GradingError(f"otter assign found no tests in {solution.name}.")
    points = {}
    for question, text in tests.items():
        match = re.search(r"^points\s*=\s*([0-9.]+)", text, re.M)
        points[question] = float(match.group(1)) if match else 1.0
    manual = []
    for cell in solution_nb["cells"]:
        text = _source(cell)
        if cell.get("cell_type") == "raw" and text.lstrip().startswith("# BEGIN QUESTION"):
            found = re.search(r"^name:\s*(\S+)", text, re.M)
            if found and re.search(r"^manual:\s*true", text, re.M | re.I):
                manual.append(found.group(1))
    return Autograder(name=name, solution=solution,
                      student_notebook=_deterministic_ids(student, name),
                      filled_notebook=_deterministic_ids(filled, name), tests=tests, points=points,
                      manual=[m for m in manual if m not in tests])


def _as_text(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def solution_lines(solution_nb: dict) -> list[str]:
    """The lines otter removes from the student version: the answers themselves."""
    lines, inside_block = [], False
    for cell in solution_nb.get("cells", []):
        src = _source(cell)
        if cell.get("cell_type") == "raw":
            head = src.strip()
            if head.startswith("# BEGIN SOLUTION"):
                inside_block = True
            elif head.startswith("# END SOLUTION"):
                inside_block = False
            continue
        if not inside_block or cell.get("cell_type") != "code":
            continue
        marked = False
        for line in src.splitlines():
            stripped = line.strip()
            if stripped.startswith("# BEGIN SOLUTION"):
                marked = True
            elif stripped.startswith("# END SOLUTION"):
                marked = False
            elif marked or re.search(r"#\s?SOLUTION\s*$", line):
                code = re.sub(r"#\s?SOLUTION\s*$", "", line).strip()
                if len(code) >= 12 and not code.startswith("#"):
                    lines.append(code)
    return lines


def given_lines(solution_nb: dict) -> set[str]:
    """The code lines students are given: code cells outside the solution and test blocks (a fix
    of a broken script given in the exercise shares lines with it without leaking anything)."""
    given, inside = set(), False
    for cell in solution_nb.get("cells", []):
        head = _source(cell).strip()
        if cell.get("cell_type") == "raw":
            if head.startswith(("# BEGIN SOLUTION", "# BEGIN TESTS")):
                inside = True
            elif head.startswith(("# END SOLUTION", "# END TESTS")):
                inside = False
        elif cell.get("cell_type") == "code" and not inside:
            given.update(line.strip() for line in _source(cell).splitlines())
    return given


def find_solution_leaks(solution_nb: dict, exercise_nb: dict) -> list[str]:
    """Answer lines, markers or hidden tests that made it into a student notebook."""
    leaks = []
    answers = set(solution_lines(solution_nb)) - given_lines(solution_nb)
    for number, cell in enumerate(exercise_nb.get("cells", []), start=1):
        src = _source(cell)
        for marker in ("# BEGIN SOLUTION", "# END SOLUTION", "# SOLUTION", "# HIDDEN", "hidden=True"):
            if marker in src:
                leaks.append(f"cell {number} contains the marker '{marker}'")
        for line in src.splitlines():
            if line.strip() in answers:
                leaks.append(f"cell {number} contains the answer line '{line.strip()[:60]}'")
    tests = exercise_nb.get("metadata", {}).get("otter", {}).get("tests", {})
    for question, text in tests.items():
        if "hidden=True" in str(text):
            leaks.append(f"the public tests of {question} in the notebook metadata include hidden tests")
    return leaks


def solution_notebooks(folder: Path = SOLUTIONS_DIR) -> list[Path]:
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))


def build_exercises(solutions: Path = SOLUTIONS_DIR, exercises: Path = EXERCISES_DIR,
                    run_tests: bool = True, echo=print) -> list[Path]:
    """Regenerate every exercise from its solution (and check the solution passes its tests)."""
    written = []
    for solution in solution_notebooks(solutions):
        echo(f"otter assign {solution.name}" + (" (running its tests)" if run_tests else ""), flush=True)
        grader = build_autograder(solution, run_tests=run_tests)
        solution_nb = json.loads(solution.read_text(encoding="utf-8"))
        leaks = find_solution_leaks(solution_nb, grader.student_notebook)
        if leaks:
            raise GradingError(f"{solution.name}: the student version would leak the solution: "
                               + "; ".join(leaks))
        target = Path(exercises) / solution.name
        write_text_atomic(target, _as_text(grader.student_notebook))
        written.append(target)
    return written


def check_exercises(solutions: Path = SOLUTIONS_DIR, exercises: Path = EXERCISES_DIR) -> list[str]:
    """Problems CI must fail on: a stale or missing exercise, a leaked solution, a stray exercise."""
    problems = []
    names = set()
    for solution in solution_notebooks(solutions):
        names.add(solution.name)
        target = Path(exercises) / solution.name
        try:
            grader = build_autograder(solution)
        except GradingError as err:
            problems.append(str(err))
            continue
        if not target.exists():
            problems.append(f"exercises/{solution.name} is missing. Fix: course exercises build")
            continue
        exercise_nb = json.loads(target.read_text(encoding="utf-8"))
        if target.read_text(encoding="utf-8") != _as_text(grader.student_notebook):
            problems.append(f"exercises/{solution.name} is stale: it differs from what "
                            f"solutions/{solution.name} generates. Fix: course exercises build")
        solution_nb = json.loads(solution.read_text(encoding="utf-8"))
        problems += [f"exercises/{solution.name}: {leak}" for leak in find_solution_leaks(solution_nb, exercise_nb)]
    for exercise in Path(exercises).glob("*.ipynb"):
        if exercise.name not in names:
            problems.append(f"exercises/{exercise.name} has no solution in solutions/.")
    return problems

