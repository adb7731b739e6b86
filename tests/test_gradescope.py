"""`course grade --gradescope ASSIGNMENT`: the autograder zip, run as Gradescope runs it, in a
simulated /autograder layout (source/ unzipped, submission/, results/), with this venv standing in
for the one setup.sh would build."""
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from course_utils import cli
from course_utils.grading import EXERCISES_DIR, SOLUTIONS_DIR, build_autograder
from course_utils.grading.gradescope import build_gradescope_zip
from course_utils.notebooks import REPO_ROOT

ASSIGNMENT = "00_setup_and_tour"


@pytest.fixture(scope="module")
def autograder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gradescope")
    assert cli.main(["grade", "--gradescope", ASSIGNMENT, "-o", str(folder / "zips"), "--timeout", "300"]) == 0
    archive = folder / "zips" / f"{ASSIGNMENT}-gradescope.zip"
    # outside /tmp, which the sandbox's own empty /tmp would hide anyway: what keeps the tests
    # from the sandbox here is the grader hiding source/ itself, as in /autograder
    outside = Path("/var/tmp") if os.access("/var/tmp", os.W_OK) else REPO_ROOT / "build"
    outside.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="autograder-", dir=outside))
    root.chmod(0o755)                     # as /autograder: what guards source/ is the grader, not this folder
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(root / "source")
        for info in zf.infolist():        # extractall drops the modes that Gradescope keeps
            mode = info.external_attr >> 16
            if mode & 0o111:
                os.chmod(root / "source" / info.filename, mode & 0o777)
    yield archive, root
    shutil.rmtree(root)


def grade_in(root, notebook: dict, name="submission.ipynb") -> dict:
    for folder in ("submission", "results"):
        for old in (root / folder).glob("*") if (root / folder).exists() else []:
            old.unlink()
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "submission" / name).write_text(json.dumps(notebook))
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "COURSE_PYTHON": sys.executable}
    env.pop("COURSE_DATA_DIR", None)     # found the usual way (this machine has no /autograder/data)
    done = subprocess.run([str(root / "source" / "run_autograder")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((root / "results" / "results.json").read_text())


def test_the_zip_has_what_gradescope_runs(autograder):
    archive, root = autograder
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
    assert {"setup.sh", "run_autograder", "assignment.json", "package/pyproject.toml",
            "package/course_utils/grading/judge.py"} <= names
    assert not any(n.startswith(("package/solutions", "package/tests", "package/.git")) for n in names)
    for script in ("setup.sh", "run_autograder"):
        path = root / "source" / script
        assert path.stat().st_mode & stat.S_IXUSR, f"{script} must be executable"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, f"{script} is not valid bash"
    spec = json.loads((root / "source" / "assignment.json").read_text())
    assert spec["name"] == ASSIGNMENT and any("hidden=True" in t for t in spec["tests"].values())


def test_the_solution_gets_full_marks_in_gradescopes_format(autograder):
    _, root = autograder
    grader = build_autograder(SOLUTIONS_DIR / f"{ASSIGNMENT}.ipynb")
    results = grade_in(root, grader.filled_notebook)
    possible = sum(grader.points.values())
    assert results["score"] == possible > 0
    assert sorted(t["name"] for t in results["tests"]) == sorted(grader.tests)
    assert sum(t["max_score"] for t in results["tests"]) == possible
    assert all(t["score"] == t["max_score"] for t in results["tests"])
    assert results["output_format"] == "md" and "Feedback" in results["output"]


def test_the_untouched_exercise_gets_zero_and_the_tests_stay_hidden(autograder):
    _, root = autograder
    exercise = json.loads((EXERCISES_DIR / f"{ASSIGNMENT}.ipynb").read_text())
    results = grade_in(root, exercise)
    assert results["score"] == 0 and len(results["tests"]) >= 4
    spec = json.loads((root / "source" / "assignment.json").read_text())
    text = json.dumps(results)
    assert "hidden test: failed" in text
    for test in spec["tests"].values():    # no line of a hidden test reaches the student's results
        hidden = test.split("hidden=True", 1)[1] if "hidden=True" in test else ""
        for line in hidden.splitlines()[2:]:
            if len(line.strip()) > 25:
                assert line.strip() not in text, line


def test_the_sandbox_cannot_read_the_autograders_source(autograder):
    _, root = autograder
    exercise = json.loads((EXERCISES_DIR / f"{ASSIGNMENT}.ipynb").read_text())
    exercise["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                              "id": "peek", "source": f"print(open({str(root / 'source' / 'assignment.json')!r}).read())"})
    results = grade_in(root, exercise)
    assert results["score"] == 0
    assert "FileNotFoundError" in results["output"] or "PermissionError" in results["output"], results["output"]


def test_more_than_one_notebook_is_refused_with_a_reason(autograder):
    _, root = autograder
    exercise = json.loads((EXERCISES_DIR / f"{ASSIGNMENT}.ipynb").read_text())
    (root / "submission").mkdir(exist_ok=True)
    for old in (root / "submission").glob("*"):
        old.unlink()
    for name in ("mine.ipynb", "other.ipynb"):
        (root / "submission" / name).write_text(json.dumps(exercise))
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "COURSE_PYTHON": sys.executable}
    done = subprocess.run([str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((root / "results" / "results.json").read_text())
    assert results["score"] == 0 and "exactly one .ipynb" in results["output"]


def test_an_unknown_assignment_names_the_known_ones(tmp_path, capsys):
    assert cli.main(["grade", "--gradescope", "99_nothing", "-o", str(tmp_path)]) == 1
    assert ASSIGNMENT in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
