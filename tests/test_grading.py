"""Homework: exercises generated from solutions, and a grader that hostile submissions cannot break.

One batch of submissions, honest and hostile, is graded once for the module (as an instructor
would, with `course grade`); each test then reads its row of the gradebook.
"""
import copy
import csv
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from course_utils import cli
from course_utils.grading import sandbox as sandbox_module
from course_utils.grading import (EXERCISES_DIR, SOLUTIONS_DIR, GradingError, build_autograder,
                                  check_exercises, find_solution_leaks, grade, isolation)

PID_NAMESPACE = isolation() == "namespaces"  # each submission in its own PID namespace (bubblewrap)
SOLUTION = SOLUTIONS_DIR / "00_setup_and_tour.ipynb"
TIMEOUT = 40  # seconds per submission in the hostile batch (the default is 10 minutes)
ESCAPE_MARKER = f"course-escape-{uuid.uuid4().hex}"   # the process name of a submission's would-be escapee
SOLUTION_TIMEOUT = 300  # a full solution trains models: CI's 2 cores took over 40 s for lesson 05's

ANSWERS = {
    "q1": "def iterations_per_epoch(n_samples, batch_size, drop_last=False):\n"
          "    return n_samples // batch_size if drop_last else math.ceil(n_samples / batch_size)",
    "q2": "def standardize_per_channel(train_images, other_images):\n"
          "    a, b = train_images.float() / 255, other_images.float() / 255\n"
          "    mean, std = a.mean(dim=(0, 2, 3), keepdim=True), a.std(dim=(0, 2, 3), keepdim=True)\n"
          "    return (a - mean) / std, (b - mean) / std",
    "q3_wrong": "def train_one_epoch(model, loader, optimizer, loss_fn):\n"
                "    losses = []\n"
                "    for x, y in loader:\n"
                "        loss = loss_fn(model(x), y)\n"
                "        optimizer.zero_grad()\n"
                "        loss.backward()\n"
                "        optimizer.step()\n"
                "        losses.append(loss.item())\n"
                "    return sum(losses) / len(losses)  # not weighted by batch size",
    "q2_wrong": "def standardize_per_channel(train_images, other_images):\n"
                "    def own(t):\n"
                "        t = t.float()\n"
                "        return (t - t.mean(dim=(0, 2, 3), keepdim=True)) / t.std(dim=(0, 2, 3), keepdim=True)\n"
                "    return own(train_images), own(other_images)  # leaks: other's own statistics",
}
STARTS = {"q1": "def iterations_per_epoch", "q2": "def standardize_per_channel", "q3": "def train_one_epoch",
          "q4": "spiral_x, spiral_y"}


def exercise():
    return json.loads((EXERCISES_DIR / "00_setup_and_tour.ipynb").read_text())


def answered(**answers):
    """The exercise with some answer cells filled in (question -> source)."""
    nb = exercise()
    for question, source in answers.items():
        start = STARTS[question.split("_")[0]]
        cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).startswith(start))
        cell["source"] = source
    return nb


def with_cell(nb, source, position=None):
    nb = copy.deepcopy(nb)
    cell = {"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None,
            "id": f"extra-{len(nb['cells'])}"}
    nb["cells"].insert(len(nb["cells"]) if position is None else position, cell)
    return nb


def detach(marker):
    """A cell that starts a detached process named `marker` with no audit event at all (below
    Python's subprocess module) and waits until it runs."""
    return f"""
import os, time, _posixsubprocess
read_end, write_end = os.pipe()
arguments = ([b'/bin/bash', b'-c', b'exec -a {marker} sleep 600'], [b'/bin/bash'], True, (write_end,),
             None, None, -1, -1, -1, -1, -1, -1, read_end, write_end, True, True, -1, None, None, None, -1, None)
try:
    escaped = _posixsubprocess.fork_exec(*arguments, False)
except TypeError:                       # the signature of Python versions without the vfork flag
    escaped = _posixsubprocess.fork_exec(*arguments)
for _ in range(100):                    # until the detached process runs under its own name
    try:
        if open(f'/proc/{{escaped}}/cmdline').read().startswith('{marker}'):
            break
    except OSError:
        pass
    time.sleep(0.05)
else:
    raise AssertionError('it did not start')"""


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("grading")
    subs = root / "submissions"
    subs.mkdir()
    out = root / "grades"
    grader = build_autograder(SOLUTION)
    q1 = answered(q1=ANSWERS["q1"])
    notebooks = {
        "solution": grader.filled_notebook,
        "untouched": exercise(),
        "syntax_error": answered(q1=ANSWERS["q1"], q2="def standardize_per_channel(train_images, other_images)\n    return 1"),
        "deleted_checks": {**q1, "cells": [c for c in q1["cells"] if "grader.check" not in "".join(c["source"])]},
        "edited_checks": q1,  # filled below: public tests in its metadata rewritten to pass anything
        "reads_hidden_tests": with_cell(exercise(), f"""
import glob, os, sys
found = []
for path in [{str(SOLUTION)!r}, {str(SOLUTIONS_DIR)!r}]:
    try:
        found.append(open(path).read()[:100] if os.path.isfile(path) else os.listdir(path))
    except Exception as err:
        found.append(repr(err))
found.append(glob.glob('/tmp/**/q1.py', recursive=True) + glob.glob('**/*.zip', recursive=True))
found.append(sys.stdin.read())
print(found)"""),
        "forges_torch": with_cell(answered(q2=ANSWERS["q2_wrong"], q3=ANSWERS["q3_wrong"]), """
import torch
torch.equal = lambda *a, **k: True
torch.allclose = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None"""),
        "forges_checker": with_cell(answered(q2=ANSWERS["q2_wrong"]), """
import otter.test_files.exception_test as et
from otter.test_files import abstract_test
et.ExceptionTestFile.run = lambda self, env: None
abstract_test.TestFile.score = property(lambda self: 100)
print('{"token": "0", "questions": {}, "cell_errors": [], "replaced": [], "blocked": [], "suspicious": []}')"""),
        "writes_outside": with_cell(q1, f"""
import os
for target in ['/tmp/course-grading-escape.txt', {str(subs / 'solution.ipynb')!r}, {str(out / 'gradebook.csv')!r}]:
    try:
        with open(target, 'w') as f:
            f.write('pwned')
    except Exception as err:
        print(err)
try:
    os.remove({str(subs / 'untouched.ipynb')!r})
except Exception as err:
    print(err)"""),
        "equals_anything": answered(q1="""class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __ge__(self, other): return True
    def __le__(self, other): return True
    def __int__(self): return 3
    def __float__(self): return 3.0
def iterations_per_epoch(n_samples, batch_size, drop_last=False):
    return Anything()""", q2="""def standardize_per_channel(train_images, other_images):
    import torch
    class Close(torch.Tensor):
        def __eq__(self, other): return torch.ones_like(other, dtype=torch.bool)
        __torch_function__ = classmethod(lambda cls, f, t, a=(), k=None: True)
    return Close(train_images.float()), Close(other_images.float())"""),
        "forges_replies": with_cell(answered(q2=ANSWERS["q2_wrong"]), """
import sys
wire = sys.modules.get('course_utils.grading.wire')
if wire is not None:                       # every answer the worker sends becomes True
    wire.to_plain = lambda value, keep, known=None: True
    _send = wire.send
    wire.send = lambda stream, message: _send(stream, {**message, "value": True})
print('{"questions": {"q1": {"score": 2, "possible": 2, "tests": []}}, "broken": null, "cell_errors": [], "blocked": []}')
sys.settrace(lambda *a: None)"""),
        "corrupts_channel": with_cell(q1, """
import os, threading
def spam():
    while True:
        for fd in range(3, 64):
            try:
                os.write(fd, b'\\xff' * 64)
            except OSError:
                pass
threading.Thread(target=spam, daemon=True).start()"""),
        "exits_early": with_cell(q1, "import os\nos._exit(0)"),
        "jupyter_features": with_cell(q1, """if True:
    grader.check("q1")
display("shown as in Jupyter")
%time computed = iterations_per_epoch(10, 3)
assert computed == 4
computed"""),
        "huge_output": with_cell(q1, "for i in range(10**7):\n    print('spam ' * 40)"),
        "network": with_cell(q1, "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)"),
        "memory_bomb": with_cell(q1, "hog = bytearray(64 * 2**30)"),
    }
    if PID_NAMESPACE:  # kill(-1) outside a PID namespace would reach this machine's processes
        notebooks["signals_everyone"] = with_cell(q1, """
import os, signal
for pid in (os.getppid(), 1, -1):
    try:
        os.kill(pid, signal.SIGKILL)
    except Exception as err:
        print(err)
try:
    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)
except Exception as err:
    print(err)""")
    if PID_NAMESPACE:  # below Python's audit hooks: only the OS sandbox stands in the way
        notebooks["escapes_below_python"] = with_cell(with_cell(q1, detach(ESCAPE_MARKER)), f"""
import os
folder = os.open({str(SOLUTIONS_DIR.parent)!r}, os.O_RDONLY)   # not the instructor's folder itself
print(os.read(os.open('solutions/{SOLUTION.name}', os.O_RDONLY, dir_fd=folder), 200))""")
        notebooks["looks_around"] = with_cell(q1, """
import os
here = os.getcwd()
root = os.open('/', os.O_RDONLY)        # opened relative to '/', past the audit hook's path checks
others = []                             # what it can see of other submissions, the grader, the judge
def look(relative):
    try:
        folder = os.open(relative, os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
    except OSError:
        return
    for entry in os.listdir(folder):
        path = os.path.join('/', relative, entry)
        if here.startswith(path + os.sep):
            look(os.path.join(relative, entry))   # the folders on the way to its own
        elif path != here:
            others.append(path)
look(os.path.relpath(os.path.dirname(os.path.dirname(here)), '/'))
look('tmp')
sockets = open('/proc/net/unix').read().splitlines()[1:]
processes = [pid for pid in os.listdir('/proc') if pid.isdigit()]
assert not others and not sockets and len(processes) < 6, (others, sockets, processes)""")
    notebooks["edited_checks"] = copy.deepcopy(q1)
    for question in notebooks["edited_checks"]["metadata"]["otter"]["tests"]:
        notebooks["edited_checks"]["metadata"]["otter"]["tests"][question] = "OK_FORMAT = False\nname = 'x'\npoints = 99\n"
    for name, nb in notebooks.items():
        (subs / f"{name}.ipynb").write_text(json.dumps(nb))
    (subs / "not_json.ipynb").write_text("this is { not a notebook")
    before = {p.name: p.read_bytes() for p in subs.iterdir()}
    results = grade([subs], out, timeout=TIMEOUT, memory_gb=8)
    rows = {row["student"]: row for row in csv.DictReader((out / "gradebook.csv").open())}
    return {"results": {r.student: r for r in results}, "rows": rows, "out": out, "subs": subs,
            "before": before, "expected_names": set(notebooks) | {"not_json"}}


def _score(batch, name):
    return float(batch["rows"][name]["total"])


def test_every_submission_has_one_row(batch):
    assert len(batch["rows"]) == len(batch["expected_names"])
    assert set(batch["rows"]["solution"]) == {"student", "assignment", "q1", "q2", "q3", "q4", "total",
                                              "possible", "status", "provisional", "notes"}


def test_the_solution_scores_full_marks(batch):
    row = batch["rows"]["solution"]
    assert (row["total"], row["possible"], row["status"], row["provisional"]) == ("10", "10", "graded", "no")


def test_the_untouched_exercise_scores_zero_without_error(batch):
    row = batch["rows"]["untouched"]
    assert (row["total"], row["status"], row["provisional"]) == ("0", "graded", "no")


def test_syntax_error_costs_only_its_question(batch):
    row = batch["rows"]["syntax_error"]
    assert row["status"] == "graded" and row["q1"] == "2" and row["q2"] == "0"
    assert row["provisional"] == "no"
    assert "SyntaxError" in row["notes"]


def test_infinite_loop_is_stopped_by_the_time_limit(tmp_path):
    (tmp_path / "loop.ipynb").write_text(json.dumps(with_cell(answered(q1=ANSWERS["q1"]), "while True:\n    pass")))
    [result] = grade([tmp_path / "loop.ipynb"], tmp_path / "out", timeout=15)
    assert result.status == "timeout" and result.total == 0
    assert "time limit of 15 s" in " ".join(result.notes) and result.seconds < 25


def test_cells_run_as_in_jupyter(batch):
    """display(), a magic and a checker call inside a block run as in the student's notebook."""
    row = batch["rows"]["jupyter_features"]
    assert (row["status"], row["q1"], row["provisional"]) == ("graded", "2", "no")
    errors = [n for n in row["notes"].split(" | ") if n.startswith("error in")]
    assert all("spiral_model" in e for e in errors), errors   # only q4's, left unanswered


def test_a_file_that_is_not_a_notebook_is_invalid(batch):
    row = batch["rows"]["not_json"]
    assert row["status"] == "invalid" and "not a valid Jupyter notebook" in row["notes"]


def test_deleting_or_editing_the_checks_changes_nothing(batch):
    for name in ("deleted_checks", "edited_checks"):
        row = batch["rows"][name]
        assert row["status"] == "graded" and row["q1"] == "2" and row["total"] == "2", name


def test_reading_the_hidden_tests_and_solutions_is_refused_and_flagged(batch):
    row = batch["rows"]["reads_hidden_tests"]
    assert row["total"] == "0" and row["provisional"] == "yes"
    # under bubblewrap the solution file is not even there (its folder is an empty tmpfs), so the
    # listing that follows is what the audit hook refuses
    assert ("reading" in row["notes"] or "listing" in row["notes"]) and "instructor's files" in row["notes"]


def test_forging_torch_comparisons_does_not_pay(batch):
    row = batch["rows"]["forges_torch"]
    # q2 and q3 pass only their public tests (which need no comparison function): 1 of q2's 4 tests, 1 of q3's 3
    assert row["q2"] == "0.5" and row["q3"] == "1"
    assert row["provisional"] == "yes" and "torch.allclose" in row["notes"]


def test_monkeypatching_the_checker_does_not_pay(batch):
    row = batch["rows"]["forges_checker"]
    assert row["status"] == "graded" and float(row["total"]) <= 1 and row["provisional"] == "yes"
    assert "uses names associated with tampering: otter" in row["notes"]


def test_objects_that_equal_anything_earn_nothing(batch):
    """Answers come back to the judge as plain data: an object that equals anything is a
    stand-in there, and a tensor subclass arrives as a plain tensor of its numbers."""
    row = batch["rows"]["equals_anything"]
    assert (row["status"], row["q1"], row["q2"], row["total"]) == ("graded", "0", "0", "0")


def test_forged_replies_and_reports_earn_nothing(batch):
    """The worker's own encoder replaced, every reply rewritten to True, a judge-style report
    printed and a trace hook left running: the judge compares values, and True is not 3."""
    row = batch["rows"]["forges_replies"]
    assert row["status"] in ("graded", "error") and row["q1"] == "0" and float(row["total"]) == 0


def test_a_corrupted_channel_or_an_early_exit_ends_only_that_submission(batch):
    for name in ("corrupts_channel", "exits_early"):
        row = batch["rows"][name]
        assert (row["status"], row["total"]) == ("error", "0"), (name, row)
        assert "stopped answering" in row["notes"], row["notes"]
    assert batch["rows"]["solution"]["total"] == "10"


def test_writes_outside_the_sandbox_are_refused(batch):
    row = batch["rows"]["writes_outside"]
    assert row["q1"] == "2" and row["provisional"] == "yes" and "outside the submission" in row["notes"]
    assert not Path("/tmp/course-grading-escape.txt").exists()
    after = {p.name: p.read_bytes() for p in batch["subs"].iterdir()}
    assert after == batch["before"]  # no submission changed another (or itself)
    assert batch["rows"]["solution"]["total"] == "10"


def test_huge_output_is_capped_and_grading_goes_on(batch):
    row = batch["rows"]["huge_output"]
    assert row["status"] == "graded" and row["q1"] == "2" and "File too large" in row["notes"]


def test_network_and_memory_bombs_fail_inside_the_sandbox(batch):
    assert batch["rows"]["network"]["q1"] == "2" and "network" in batch["rows"]["network"]["notes"]
    row = batch["rows"]["memory_bomb"]
    assert row["status"] == "graded" and row["q1"] == "2" and "MemoryError" in row["notes"]


@pytest.mark.skipif(not PID_NAMESPACE, reason="signals every process only inside a PID namespace "
                    f"(isolation here: {isolation()}); install Debian's bubblewrap to run it")
def test_signalling_the_grader_or_every_process_is_refused(batch):
    """The audit hook refuses the signals; under bubblewrap (tests/test_sandbox.py) the grader
    could not be named from the sandbox even if a signal got past it."""
    row = batch["rows"]["signals_everyone"]
    assert row["status"] == "graded" and row["q1"] == "2" and row["provisional"] == "yes"
    assert "sending signal 9" in row["notes"]
    assert batch["rows"]["solution"]["total"] == "10"


@pytest.mark.skipif(not PID_NAMESPACE, reason="needs each submission in its own namespaces (bubblewrap)")
def test_what_python_cannot_see_the_os_sandbox_stops(batch):
    """A process started with no audit event, detached into its own session, dies with the
    sandbox; a file opened relative to a directory descriptor, which no path check sees, is not
    there (the solutions folder is an empty tmpfs)."""
    row = batch["rows"]["escapes_below_python"]
    assert (row["status"], row["q1"], row["total"]) == ("graded", "2", "2"), row
    errors = [note for note in row["notes"].split(" | ") if note.startswith("error in") and "spiral_model" not in note]
    assert len(errors) == 1 and "FileNotFoundError" in errors[0], errors   # the process did start
    assert subprocess.run(["pgrep", "-f", ESCAPE_MARKER], capture_output=True).returncode == 1, \
        "a process started by a submission outlived its grading"


@pytest.mark.skipif(not PID_NAMESPACE, reason="needs each submission in its own namespaces (bubblewrap)")
def test_a_submission_sees_no_other_submission_no_socket_and_no_grader(batch):
    row = batch["rows"]["looks_around"]
    assert (row["status"], row["q1"]) == ("graded", "2"), row
    assert "AssertionError" not in row["notes"], row["notes"]


def test_feedback_explains_each_question_without_revealing_hidden_tests(batch):
    text = (batch["out"] / "feedback" / "syntax_error.md").read_text()
    assert "Score: 2 / 10 (graded)" in text and "## q2: 0 / 2" in text
    assert "- hidden test: failed" in text and "drop_last=True) == 3" not in text
    assert "Questions graded by your instructor: q5." in text
    assert "provisional" in (batch["out"] / "feedback" / "forges_torch.md").read_text()


def test_outputs_are_complete_files(batch):
    names = sorted(p.name for p in (batch["out"] / "feedback").iterdir())
    assert len(names) == len(batch["expected_names"]) and not [n for n in names if n.startswith(".")]
    assert [p.name for p in batch["out"].iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("solution", [p for p in sorted(SOLUTIONS_DIR.glob("[0-9][0-9]_*.ipynb"))
                                      if p.name != SOLUTION.name], ids=lambda p: p.stem)
def test_every_other_solution_scores_full_marks_and_its_exercise_zero(solution, tmp_path):
    """Lesson 00's pair is in the batch above; here every other assignment gets the same check."""
    grader = build_autograder(solution)
    (tmp_path / "solution.ipynb").write_text(json.dumps(grader.filled_notebook))
    shutil.copy(EXERCISES_DIR / solution.name, tmp_path / "untouched.ipynb")
    results = {r.student: r for r in grade([tmp_path], tmp_path / "out", timeout=SOLUTION_TIMEOUT)}
    full, empty = results["solution"], results["untouched"]
    assert (full.status, full.total, full.possible, full.provisional) == ("graded", full.possible, sum(grader.points.values()), False)
    assert (empty.status, empty.total, empty.provisional) == ("graded", 0, False)
    assert 3 <= len(grader.tests) <= 6, "each exercise has 3-6 graded questions"


# ---------------------------------------------------------------------------------------------
# Exercises stay in step with solutions and never contain them
# ---------------------------------------------------------------------------------------------

def test_exercises_are_current_and_leak_nothing():
    assert check_exercises() == []


def test_a_stale_or_leaking_exercise_is_reported(tmp_path):
    solutions, exercises = tmp_path / "solutions", tmp_path / "exercises"
    solutions.mkdir()
    exercises.mkdir()
    shutil.copy(SOLUTION, solutions)
    nb = exercise()
    cell = next(c for c in nb["cells"] if "".join(c["source"]).startswith("def standardize_per_channel"))
    cell["source"] = "def standardize_per_channel(train_images, other_images):\n    train = train_images.float()\n    ..."
    (exercises / SOLUTION.name).write_text(json.dumps(nb))
    problems = check_exercises(solutions, exercises)
    assert any("stale" in p and "course exercises build" in p for p in problems)
    assert any("train = train_images.float()" in p for p in problems)


def test_a_solution_marker_in_a_code_cell_is_refused(tmp_path):
    """otter would ship the whole solution to students without a warning; we refuse to build."""
    nb = json.loads(SOLUTION.read_text())
    index = next(i for i, c in enumerate(nb["cells"])
                 if c["cell_type"] == "raw" and "".join(c["source"]).strip() == "# BEGIN SOLUTION")
    nb["cells"][index] = {"cell_type": "code", "metadata": {}, "source": "# BEGIN SOLUTION",
                          "outputs": [], "execution_count": None, "id": "oops"}
    broken = tmp_path / SOLUTION.name
    broken.write_text(json.dumps(nb))
    with pytest.raises(GradingError, match=r"code cell starting with '# BEGIN SOLUTION'; make it a raw cell"):
        build_autograder(broken)


def test_leak_finder_sees_answer_lines_and_hidden_tests():
    solution_nb = json.loads(SOLUTION.read_text())
    assert find_solution_leaks(solution_nb, exercise()) == []
    leaky = exercise()
    leaky["metadata"]["otter"]["tests"]["q1"] += "\n@test_case(points=None, hidden=True)\n"
    assert any("hidden tests" in p for p in find_solution_leaks(solution_nb, leaky))


def test_lines_the_exercise_gives_are_not_leaks_but_others_are():
    """Exercise 10 gives a broken script and asks for the fixed one: the lines they share are in
    the student's notebook by design; an answer line that is not given still counts as a leak."""
    def cell(kind, source):
        return {"cell_type": kind, "metadata": {}, "source": source}
    solution_nb = {"cells": [
        cell("code", "def broken(x):\n    total = sum(v for v in x)\n    return total + 1"),
        cell("raw", "# BEGIN SOLUTION"),
        cell("code", "def fixed(x):\n    # BEGIN SOLUTION\n    total = sum(v for v in x)\n"
                     "    return total - len(x) + 0\n    # END SOLUTION"),
        cell("raw", "# END SOLUTION"),
    ]}
    student = {"cells": [solution_nb["cells"][0], cell("code", "def fixed(x):\n    ...")], "metadata": {}}
    assert find_solution_leaks(solution_nb, student) == []
    student["cells"].append(cell("code", "return total - len(x) + 0"))
    assert find_solution_leaks(solution_nb, student) == [
        "cell 3 contains the answer line 'return total - len(x) + 0'"]


def test_grade_command_end_to_end(tmp_path, capsys):
    sub = tmp_path / "subs"
    sub.mkdir()
    (sub / "dana.ipynb").write_text(json.dumps(answered(q1=ANSWERS["q1"], q2=ANSWERS["q2"])))
    assert cli.main(["grade", str(sub), "-o", str(tmp_path / "g"), "--timeout", "60"]) == 0
    out = capsys.readouterr().out
    assert "dana" in out and "4/10" in out and "1 graded" in out
    assert (tmp_path / "g" / "gradebook.csv").exists() and (tmp_path / "g" / "feedback" / "dana.md").exists()


def test_a_rerun_keeps_unchanged_results_and_grades_only_what_changed(batch, tmp_path):
    """The hostile batch above ran with one job per core; rerunning it keeps every row (nothing is
    graded again, so it takes seconds), and an edited submission alone is graded again."""
    subs = tmp_path / "subs"
    shutil.copytree(batch["subs"], subs)
    out = tmp_path / "grades"
    shutil.copytree(batch["out"], out)
    before = (out / "gradebook.csv").read_text()
    lines = []
    kept = grade([subs], out, timeout=TIMEOUT, memory_gb=8, echo=lambda *a, **k: lines.append(a[0]))
    assert (out / "gradebook.csv").read_text() == before
    assert sum("kept from the last run" in line for line in lines) == len(batch["expected_names"])
    assert all(r.seconds == batch["results"][r.student].seconds for r in kept)
    (subs / "untouched.ipynb").write_text(json.dumps(answered(q1=ANSWERS["q1"])))
    lines.clear()
    rows = {r.student: r for r in grade([subs], out, timeout=TIMEOUT, memory_gb=8,
                                        echo=lambda *a, **k: lines.append(a[0]))}
    assert [l.split()[0] for l in lines if "kept from the last run" not in l] == ["untouched"]
    assert rows["untouched"].total == 2 and rows["solution"].total == 10


def test_regrade_grades_again(tmp_path):
    (tmp_path / "subs").mkdir()
    (tmp_path / "subs" / "ann.ipynb").write_text(json.dumps(exercise()))
    first = grade([tmp_path / "subs"], tmp_path / "out", timeout=60, echo=lambda *a, **k: None)
    lines = []
    again = grade([tmp_path / "subs"], tmp_path / "out", timeout=60, regrade=True,
                  echo=lambda *a, **k: lines.append(a[0]))
    assert "kept" not in " ".join(lines) and again[0].seconds != first[0].seconds
    assert again[0].total == first[0].total == 0
    with pytest.raises(GradingError, match="give 1 or more"):
        grade([tmp_path / "subs"], tmp_path / "out", jobs=0)


def test_an_interrupted_batch_resumes_where_it_stopped(tmp_path):
    """Stop `course grade` with Ctrl-C (SIGINT) once the first row is in the gradebook; the same
    command then keeps that row and grades only the rest."""
    import signal
    import subprocess
    import sys
    import time
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("a", "b", "c"):
        (subs / f"{name}.ipynb").write_text(json.dumps(exercise()))
    command = [sys.executable, "-m", "course_utils.cli", "grade", str(subs), "-o", str(tmp_path / "g"),
               "--jobs", "1", "--timeout", "120"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gradebook = tmp_path / "g" / "gradebook.csv"
    deadline = time.monotonic() + 240
    while not gradebook.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    rows = list(csv.DictReader(gradebook.open()))
    assert 1 <= len(rows) < 3, "stopped after the first submission"
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("kept from the last run") == len(rows)
    assert len(list(csv.DictReader(gradebook.open()))) == 3


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="the fallback drops to a user of its own only as root")
@pytest.mark.parametrize("kind", ["none", "network only"])
def test_without_namespaces_a_sandbox_runs_as_a_user_of_its_own(kind, tmp_path, monkeypatch):
    """Where bubblewrap cannot run (a Docker container, as on Gradescope) and the grader is root,
    the sandbox drops to a user id of its own: a file only root may read stays unread even by
    code that slips past the audit hooks (a read relative to a directory descriptor), and a
    process it detaches below them dies when grading ends, even with no cgroup to kill it."""
    monkeypatch.setattr(sandbox_module, "_ISOLATION", kind)
    if sandbox_module.unprivileged_user() is None:
        pytest.skip(f"an unprivileged user cannot run {sys.executable} here (it lies in a folder only root may enter)")
    monkeypatch.setattr(sandbox_module, "submission_cgroups", lambda *args, **kwargs: [])
    import tempfile
    outside = Path(tempfile.mkdtemp(prefix="course-fallback-", dir="/var/tmp" if os.access("/var/tmp", os.W_OK) else None))
    try:
        outside.chmod(0o755)                      # anyone may enter; only root may enter private/
        secret = outside / "private" / "answers.txt"
        secret.parent.mkdir()
        secret.write_text("the hidden tests")
        secret.parent.chmod(0o700)
        marker = f"course-fallback-{uuid.uuid4().hex}"
        nb = with_cell(with_cell(answered(q1=ANSWERS["q1"]), detach(marker)), f"""
import os
assert os.getuid() != 0, 'running as root'
folder = os.open({str(outside)!r}, os.O_RDONLY)
print(os.read(os.open('private/answers.txt', os.O_RDONLY, dir_fd=folder), 100))""")
        (tmp_path / "subs").mkdir()
        (tmp_path / "subs" / "fallback.ipynb").write_text(json.dumps(nb))
        [result] = grade([tmp_path / "subs"], tmp_path / "out", timeout=TIMEOUT)
    finally:
        shutil.rmtree(outside)
    assert result.status == "graded" and result.scores["q1"] == 2, (result.status, result.notes)
    errors = [note for note in result.notes if note.startswith("error in") and "spiral_model" not in note]
    assert len(errors) == 1 and "PermissionError" in errors[0] and "answers.txt" in errors[0], errors
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1, \
        "a process the submission detached outlived its grading"
