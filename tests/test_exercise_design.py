"""Exercises test understanding: no answer is the lesson's code copied, and each has a target.

The notebook guide asks that every question apply the lesson's idea to a case the lesson did not
show. These checks are the part of that a machine can judge: the reference answer of each question
must not be mostly lines that already stand in the lesson, and each exercise must have a question
whose check is a target to reach.
"""
import json
import re
from pathlib import Path

import pytest

from course_utils.grading import SOLUTIONS_DIR, solution_lines

LESSONS_DIR = SOLUTIONS_DIR.parent / "notebooks"

# Lines every training loop has; sharing them with the lesson says nothing about copying.
BOILERPLATE = {"optimizer.zero_grad()", "loss.backward()", "optimizer.step()", "model.zero_grad()",
               "with torch.no_grad():", "super().__init__()", "def forward(self, x):", "model.train()",
               "model.eval()", "@torch.no_grad()"}


def questions(solution_nb: dict) -> dict[str, list[dict]]:
    """The cells of each question of an otter master notebook, by question name."""
    found, current = {}, None
    for cell in solution_nb["cells"]:
        source = "".join(cell["source"]).strip()
        if cell["cell_type"] == "raw" and source.startswith("# BEGIN QUESTION"):
            current = re.search(r"name:\s*(\S+)", source).group(1)
            found[current] = []
        elif cell["cell_type"] == "raw" and source.startswith("# END QUESTION"):
            current = None
        elif current is not None:
            found[current].append(cell)
    return found


def answer_lines(cells: list[dict]) -> list[str]:
    opened = {"cell_type": "raw", "source": ["# BEGIN SOLUTION"]}
    return [line for line in solution_lines({"cells": [opened, *cells]})
            if line not in BOILERPLATE and not re.fullmatch(r"torch\.manual_seed\(\d+\)", line)]


def lesson_code_lines(lesson_nb: dict) -> set[str]:
    return {line.strip() for cell in lesson_nb["cells"] if cell["cell_type"] == "code"
            for line in "".join(cell["source"]).splitlines()}


SOLUTIONS = sorted(SOLUTIONS_DIR.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_no_answer_is_mostly_lesson_code(solution):
    lesson = lesson_code_lines(json.loads((LESSONS_DIR / solution.name).read_text()))
    copied_answers = []
    for name, cells in questions(json.loads(solution.read_text())).items():
        lines = answer_lines(cells)
        copied = [line for line in lines if line in lesson]
        if lines and len(copied) / len(lines) >= 0.5:
            copied_answers.append(f"{name}: {len(copied)} of {len(lines)} answer lines stand in the lesson, "
                                  f"e.g. {copied[0]!r}")
    assert not copied_answers, ("Rewrite these questions so they apply the idea to a case the lesson "
                                "did not show:\n  " + "\n  ".join(copied_answers))


def test_the_guard_sees_a_copied_answer():
    lesson = {"cells": [{"cell_type": "code", "source": ["def f(w, a):\n", "    return w.sign() * (w.abs() - a)\n"]}]}
    solution = {"cells": [
        {"cell_type": "raw", "source": ["# BEGIN QUESTION\nname: q1"]},
        {"cell_type": "raw", "source": ["# BEGIN SOLUTION"]},
        {"cell_type": "code", "source": ["def f(w, a):\n", "    # BEGIN SOLUTION\n",
                                         "    return w.sign() * (w.abs() - a)\n", "    # END SOLUTION\n"]},
        {"cell_type": "raw", "source": ["# END SOLUTION"]},
        {"cell_type": "raw", "source": ["# END QUESTION"]},
    ]}
    (cells,) = questions(solution).values()
    assert answer_lines(cells) == ["return w.sign() * (w.abs() - a)"]
    assert set(answer_lines(cells)) <= lesson_code_lines(lesson)


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.stem)
def test_every_exercise_has_a_question_with_a_target(solution):
    """A target question is marked in its prompt: '**Target:** ...' states what must be reached."""
    prompts = ["".join(cell["source"]) for cells in questions(json.loads(solution.read_text())).values()
               for cell in cells if cell["cell_type"] == "markdown"]
    assert any("**Target:**" in prompt for prompt in prompts), (
        f"{solution.name}: no question states a **Target:** (an accuracy, a loss or a speed to reach)")
