"""`course release OUTDIR`: the student edition holds the lessons, the exercises and the package,
and no answer, no hidden test and no grading tool, searched for line by line."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from course_utils import cli
from course_utils.grading import GradingError
from course_utils.grading.release import find_release_leaks, release, secrets
from course_utils.notebooks import REPO_ROOT


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    # check=False: test_grading.py checks that exercises/ is current; here, what the edition holds
    return release(tmp_path_factory.mktemp("release") / "student-edition", check=False, echo=lambda *a, **k: None)


def test_the_edition_holds_the_course_and_no_instructor_files(edition):
    lessons = sorted(p.name for p in (edition / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert lessons == sorted(p.name for p in (REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(p.name for p in (edition / "exercises").glob("*.ipynb")) == \
        sorted(p.name for p in (REPO_ROOT / "exercises").glob("*.ipynb"))
    assert (edition / "course_utils" / "training.py").is_file() and (edition / "course_utils" / "checks.py").is_file()
    for instructor_only in ("solutions", "tests", "benchmarks", ".git", "course_utils/grading", ".ci"):
        assert not (edition / instructor_only).exists(), instructor_only
    readme = (edition / "README.md").read_text()
    assert "make course" in readme and "## The lessons" in readme and "exercises/" in readme
    assert "solutions/" not in readme and "course grade" not in readme
    assert 'packages = ["course_utils"]' in (edition / "pyproject.toml").read_text()


def test_no_answer_line_or_hidden_test_is_in_the_edition(edition):
    assert find_release_leaks(edition) == []


def test_the_search_finds_a_planted_answer_and_a_hidden_test(edition, tmp_path):
    found = secrets()
    answer = found["03_regularization.ipynb"][0]
    hidden = next(line for line in found["03_regularization.ipynb"] if "Dropout2d" in line)
    copy = tmp_path / "copy"
    shutil.copytree(edition, copy)
    nb_path = copy / "exercises" / "03_regularization.ipynb"
    nb = json.loads(nb_path.read_text())
    nb["cells"][-1]["source"] = f"{answer}\n"
    nb_path.write_text(json.dumps(nb))
    (copy / "course_utils" / "extra.py").write_text(f"# notes\n{hidden}\n")
    leaks = find_release_leaks(copy)
    assert any("03_regularization.ipynb" in leak and "exercises" in leak for leak in leaks), leaks
    assert any("extra.py" in leak for leak in leaks), leaks


def test_the_edition_imports_alone_and_its_command_has_no_grader(edition):
    env = {**os.environ, "PYTHONPATH": str(edition)}
    probe = ("import sys\n"     # as in a student's environment: without the instructor's editable install
             "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
             "import course_utils, course_utils.checks, importlib.util, contextlib, io\n"
             "from course_utils import cli\n"
             "assert course_utils.__file__.startswith(%r), course_utils.__file__\n"
             "assert importlib.util.find_spec('course_utils.grading') is None\n"
             "out = io.StringIO()\n"
             "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
             "    cli.main(['--help'])\n"
             "print(out.getvalue())\n") % str(edition)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=edition,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    commands = done.stdout.split("{", 1)[1].split("}", 1)[0].split(",")
    assert commands == ["doctor", "data", "run", "lab"], commands


def test_release_refuses_a_folder_in_use_and_leaves_nothing_behind(tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(GradingError, match="not empty"):
        release(used, check=False)
    assert [p.name for p in used.iterdir()] == ["notes.txt"]
    with pytest.raises(GradingError, match="inside the course repository"):
        release(REPO_ROOT / "build" / "edition", check=False)
    assert cli.main(["release", str(used), "--no-check"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["used"]      # no partial folder left beside it
