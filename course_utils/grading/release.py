"""`course release OUTDIR`: the student edition of the course.

This repository is the instructor's source: it holds the reference answers (solutions/) and the
hidden tests in them. The student edition is what to hand out instead: the lessons, the exercise
notebooks (with their public checks only), the companion package without the grading tools, the
set-up, and a README written for students. `find_release_leaks` searches a written edition for
every answer line and hidden test of every solution; `release` refuses to finish when it finds one.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from ..files import write_text_atomic
from .assignments import (EXERCISES_DIR, REPO_ROOT, SOLUTIONS_DIR, GradingError, check_exercises,
                          solution_lines, solution_notebooks)

# What students get, relative to the repository root (course_utils/grading/ is left out).
COPIED = ("notebooks", "exercises", "course_utils", "scripts/setup.sh", "environment.yml", ".gitignore")
LEFT_OUT = ("course_utils/grading",)
README_SECTIONS = ("The lessons", "Data", "Using `course_utils`", "Without make (conda, or your own environment)",
                   "Troubleshooting")
MARKERS = ("# BEGIN SOLUTION", "# END SOLUTION", "# HIDDEN", "hidden=True", "# BEGIN TESTS")

STUDENT_INTRO = """\
# Deep learning, hands-on (student edition)

A course of Jupyter notebooks that teach how neural networks are *trained*: epochs and batches,
overfitting, regularization, activations and gradients, normalization, convolution, optimizers,
tuning, transfer learning and a training playbook. Every lesson builds its idea from scratch in a
few lines, checks it against PyTorch, measures what happens, and shows it in a plot.

The notebooks run on `course_utils`, a small companion package you are meant to read.

## Quick start

On Linux or macOS with Python 3.10 or newer and `make`:

```bash
make course       # set up ./.venv and the dataset, then run every lesson headless into build/
make lab          # open JupyterLab on the course
```

## Exercises

Each lesson has an exercise notebook in `exercises/`. Replace every `...` with your code and run
the `grader.check("q1")` cell under a question for instant feedback from its public checks. Your
instructor grades the notebook you hand in with further, hidden checks of the same behaviour on
other inputs, so make your code right, not just the public checks pass. Before handing in, run
Kernel → Restart and Run All. Questions that ask for a measurement or an explanation are read by
your instructor.
"""

STUDENT_MAKEFILE = """\
# The course in one command: make course (run every lesson headless), then make lab.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: course setup lab doctor clean

course:            ## set up, then execute every notebook headless into build/ with a table of times
\tscripts/setup.sh
\t$(BIN)/course run

setup:             ## only the set-up: .venv with the packages, and the dataset
\tscripts/setup.sh

lab: setup         ## open JupyterLab on the course
\t$(BIN)/course lab

doctor: setup      ## check versions, device and dataset
\t$(BIN)/course doctor

clean:             ## remove run outputs (keeps the venv)
\trm -rf build
"""


def _sections(readme: str, titles) -> str:
    """The README's `## title` sections, in the order given."""
    parts = re.split(r"(?m)^## ", readme)
    found = {part.split("\n", 1)[0].strip(): "## " + part for part in parts[1:]}
    return "\n".join(found[title].rstrip() + "\n" for title in titles if title in found)


def _student_readme(readme: str) -> str:
    body = _sections(readme, README_SECTIONS)
    body = body.replace("Each lesson comes with an exercise notebook in `exercises/` and its solution in `solutions/`.",
                        "Each lesson comes with an exercise notebook in `exercises/`.")
    body = re.sub(r"(?m)^\| `course_utils/grading/`.*\n", "", body)
    body = body.replace("| `course_utils/notebooks.py`, `cli.py` | running notebooks headless; the `course` command |",
                        "| `course_utils/notebooks.py`, `cli.py` | running notebooks headless; the `course` command (`course doctor`, `data`, `run`, `lab`) |")
    return STUDENT_INTRO + "\n" + body


def _student_pyproject(text: str) -> str:
    text = re.sub(r'(?m)^packages = \[.*\]$', 'packages = ["course_utils"]', text)
    text = re.sub(r"(?ms)^\[project\.optional-dependencies\].*?(?=^\[)", "", text)
    return re.sub(r"(?ms)^\[tool\.pytest\.ini_options\].*?(?=^\[|\Z)", "", text).rstrip() + "\n"


def _student_environment(text: str) -> str:
    """environment.yml without the test tools (students get no tests)."""
    return text.split("      # tests\n")[0].replace("(tests/test_packaging.py checks that they agree)",
                                                    "(the instructor's tests keep them in step)")


def public_lines(solution_nb: dict) -> set[str]:
    """The lines students get from a solution notebook: its markdown, the code it gives and its
    public tests; not its answer cells, not its hidden tests."""
    lines, in_answer = set(), False
    for cell in solution_nb.get("cells", []):
        source = "".join(cell.get("source", ""))
        head = source.strip()
        if cell.get("cell_type") == "raw":
            in_answer = head.startswith("# BEGIN SOLUTION") or (in_answer and not head.startswith("# END SOLUTION"))
            continue
        if (in_answer and cell.get("cell_type") == "code") or head.startswith("# HIDDEN"):
            continue
        lines.update(line.strip() for line in source.splitlines())
    return lines


def secrets(solutions: Path = SOLUTIONS_DIR) -> dict[str, list[str]]:
    """What must never reach students, per solution notebook: its answer lines and the lines of
    its hidden tests (20 characters or more), less every line students get anyway: from any
    lesson, the package, the README, or the markdown, given code and public tests of any exercise."""
    notebooks = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in solution_notebooks(solutions)}
    known = set()
    for path in [*(REPO_ROOT / "notebooks").glob("*.ipynb"), *(REPO_ROOT / "course_utils").glob("*.py"),
                 REPO_ROOT / "README.md"]:
        known |= _lines(path)
    for nb in notebooks.values():
        known |= public_lines(nb)
    for path in EXERCISES_DIR.glob("*.ipynb"):    # the public tests as otter rewrote them, not the cells
        tests = json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("otter", {}).get("tests", {})
        known.update(line.strip() for test in tests.values() for line in str(test).splitlines()
                     if "hidden=True" not in str(test))
    found = {}
    for name, nb in notebooks.items():
        hidden = set()
        for cell in nb.get("cells", []):
            source = "".join(cell.get("source", ""))
            if cell.get("cell_type") == "code" and source.strip().startswith("# HIDDEN"):
                hidden.update(line.strip() for line in source.splitlines()[1:] if len(line.strip()) >= 20)
        found[name] = sorted((set(solution_lines(nb)) | hidden) - known)
    return found


def _lines(path: Path) -> set[str]:
    """The stripped lines of a file; of a notebook, those of its cells and of its public tests."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = set(text.splitlines())
    if path.suffix == ".ipynb":
        nb = json.loads(text)
        for cell in nb.get("cells", []):
            lines.update("".join(cell.get("source", "")).splitlines())
        for test in nb.get("metadata", {}).get("otter", {}).get("tests", {}).values():
            lines.update(str(test).splitlines())
    return {line.strip() for line in lines}


def find_release_leaks(folder: Path, solutions: Path = SOLUTIONS_DIR) -> list[str]:
    """Every answer line, hidden test line, solution marker or instructor file found in `folder`."""
    folder = Path(folder)
    leaks = [f"{name} is in the student edition" for name in ("solutions", "tests", ".git", *LEFT_OUT)
             if (folder / name).exists()]
    files = {path.relative_to(folder): _lines(path) for path in folder.rglob("*")
             if path.is_file() and ".venv" not in path.parts}
    for name, secret in secrets(solutions).items():
        for where, lines in files.items():
            for line in sorted(lines.intersection(secret)):
                leaks.append(f"{where} contains a line of {name}'s answers or hidden tests: {line[:70]!r}")
    for where, lines in files.items():
        for marker in MARKERS:
            if where.suffix in (".ipynb", ".py") and any(marker in line for line in lines):
                leaks.append(f"{where} contains the marker {marker!r}")
    return leaks


def release(output: Path, check: bool = True, echo=print) -> Path:
    """Write the student edition into `output` (a new folder), all or nothing: it is built beside
    it and renamed into place only once it is complete and free of solutions."""
    output = Path(output).resolve()
    if output.exists() and any(output.iterdir()):
        raise GradingError(f"{output} exists and is not empty: give a new folder (or delete it first).")
    if REPO_ROOT in (output, *output.parents):
        raise GradingError(f"{output} is inside the course repository: give a folder outside it.")
    if check:
        echo("checking that exercises/ is current with solutions/ ...", flush=True)
        problems = check_exercises(SOLUTIONS_DIR, EXERCISES_DIR)
        if problems:
            raise GradingError("exercises/ is not ready to release:\n  - " + "\n  - ".join(problems))
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-partial-", dir=output.parent))
    try:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info")
        for name in COPIED:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(source, staging / name, ignore=ignore)
            else:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, staging / name)
        for name in LEFT_OUT:
            shutil.rmtree(staging / name, ignore_errors=True)
        readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
        write_text_atomic(staging / "README.md", _student_readme(readme))
        write_text_atomic(staging / "Makefile", STUDENT_MAKEFILE)
        write_text_atomic(staging / "environment.yml",
                          _student_environment((REPO_ROOT / "environment.yml").read_text(encoding="utf-8")))
        write_text_atomic(staging / "pyproject.toml",
                          _student_pyproject((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")))
        echo("searching the student edition for answers and hidden tests ...", flush=True)
        leaks = find_release_leaks(staging)
        if leaks:
            raise GradingError("the student edition would leak:\n  - " + "\n  - ".join(leaks[:20]))
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output
